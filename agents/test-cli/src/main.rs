//! `test-cli`: a plain command-line program, not an agent.

fn main() {
    println!("I am a command, not an agent");
}
