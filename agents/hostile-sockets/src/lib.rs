//! `hostile-sockets`: opens a raw TCP connection with `std::net`, which makes
//! the component import `wasi:sockets`. The host provides no sockets, so it
//! must refuse to install this component at all.

use toka_guest::{Agent, Context, Task};

#[derive(Default)]
struct Sockets;

impl Agent for Sockets {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let stream = std::net::TcpStream::connect(task.description.as_str())
            .map_err(|e| format!("connect {}: {e}", task.description))?;
        Ok(format!("connected to {:?}", stream.peer_addr()).into_bytes())
    }
}

toka_guest::export_agent!(Sockets);
