//! `hostile-memory`: grows its memory without bound, and looks for what
//! earlier instances left in memory.
//!
//! Tasks: `grow` allocates (and touches) 1 MiB after 1 MiB and keeps all of
//! it; `residue fill` writes a pattern over its unused stack and over 32
//! new pages (2 MiB) and answers how many bytes it wrote; `residue scan`
//! answers how many bytes of its unused stack and of 64 new pages are not
//! zero (a fresh instance must see none); `residue check` fills, then scans
//! its own stack (proof that the scan sees a pattern); `ok` completes.

#![allow(
    unsafe_code,
    reason = "reading and writing memory no allocation owns is what this agent is for"
)]

use toka_guest::{Agent, Context, Task};

/// A WebAssembly page.
const PAGE: usize = 64 << 10;
/// Pages `residue fill` grows and fills ...
const FILL_PAGES: usize = 32;
/// ... and pages `residue scan` grows and reads: more, so its new pages
/// cover the filled ones wherever its memory starts to grow.
const SCAN_PAGES: usize = 64;

#[derive(Default)]
struct Hog;

impl Agent for Hog {
    fn handle_task(&mut self, _ctx: &mut Context, task: Task) -> Result<Vec<u8>, String> {
        let answer = match task.description.as_str() {
            "grow" => {
                let mut kept: Vec<Vec<u8>> = Vec::new();
                loop {
                    kept.push(vec![0xAB; 1 << 20]);
                    std::hint::black_box(&kept);
                }
            }
            "residue fill" => fill(unused_stack()) + fill(grown(FILL_PAGES)?),
            "residue scan" => nonzero(unused_stack()) + nonzero(grown(SCAN_PAGES)?),
            "residue check" => {
                fill(unused_stack());
                nonzero(unused_stack())
            }
            "ok" => return Ok(b"ok".to_vec()),
            other => return Err(format!("unknown task `{other}` (grow, residue …, ok)")),
        };
        Ok(answer.to_string().into_bytes())
    }
}

/// The stack below the caller's frame, less a margin, down to 1 KiB: Rust
/// lays the stack out first in linear memory, so nothing else lives there
/// and a fresh instance has zeros there.
#[inline(never)]
fn unused_stack() -> std::ops::Range<usize> {
    let here = 0u8;
    let top = std::hint::black_box(std::ptr::addr_of!(here) as usize);
    1024..top.saturating_sub(16 << 10)
}

/// `pages` new pages of linear memory.
fn grown(pages: usize) -> Result<std::ops::Range<usize>, String> {
    #[cfg(target_arch = "wasm32")]
    let first = core::arch::wasm32::memory_grow(0, pages);
    // Built for the host too (the workspace's checks): no pages there.
    #[cfg(not(target_arch = "wasm32"))]
    let first = usize::MAX;
    if first == usize::MAX {
        return Err(format!("memory did not grow by {pages} pages"));
    }
    Ok(first * PAGE..(first + pages) * PAGE)
}

fn fill(range: std::ops::Range<usize>) -> usize {
    let len = range.len();
    for addr in range {
        // SAFETY: in bounds of linear memory, owned by no allocation.
        unsafe { std::ptr::write_volatile(addr as *mut u8, 0xA5) };
    }
    len
}

fn nonzero(range: std::ops::Range<usize>) -> usize {
    range
        // SAFETY: as in `fill`.
        .filter(|addr| unsafe { std::ptr::read_volatile(*addr as *const u8) } != 0)
        .count()
}

toka_guest::export_agent!(Hog);
