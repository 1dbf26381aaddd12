//! Rust memory workload with known allocations (the system allocator):
//! alloc_chain.c's protocol (a line on stdin starts it, argv[1]
//! milliseconds, then "done <churned> <keeper's bytes> <kept bytes> <kept
//! blocks>" and a pause), with `Vec<u8>`s:
//!  - "churner": churn -> alloc_and_free makes vectors of 32 to 4096
//!    bytes and drops each at once;
//!  - "keeper": keep -> keep_some makes vectors of 256 to 8192 bytes and
//!    keeps every other one.
use std::hint::black_box;
use std::io::BufRead;
use std::time::{Duration, Instant};

const MAX_KEPT: usize = 1 << 20;

#[inline(never)]
fn alloc_and_free(size: usize) -> u64 {
    let mut block = Vec::<u8>::with_capacity(size);
    block.push(1);
    black_box(&block);
    size as u64
}

fn churn(until: Instant) -> u64 {
    let mut churned = 0;
    let mut i = 0;
    while Instant::now() < until {
        for size in (32..=4096).step_by(32) {
            churned += alloc_and_free(size + (i & 31));
        }
        i += 1;
    }
    churned
}

#[inline(never)]
fn keep_some(size: usize, i: usize, kept: &mut Vec<Vec<u8>>) -> (u64, u64) {
    let mut block = Vec::<u8>::with_capacity(size);
    block.push(1);
    black_box(&block);
    if i % 2 == 0 && kept.len() < MAX_KEPT {
        kept.push(block);
        (size as u64, size as u64)
    } else {
        (size as u64, 0)
    }
}

fn keep(until: Instant) -> (u64, u64, Vec<Vec<u8>>) {
    // Room for every kept block up front: the holder never grows.
    let mut kept = Vec::with_capacity(MAX_KEPT);
    let (mut asked, mut held) = (0, 0);
    let mut i = 0;
    while Instant::now() < until && kept.len() < MAX_KEPT {
        let (a, h) = keep_some(256 + (i * 97) % 7937, i, &mut kept);
        asked += a;
        held += h;
        i += 1;
    }
    (asked, held, kept)
}

fn main() {
    let run_ms: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(3000);
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).unwrap();
    let until = Instant::now() + Duration::from_millis(run_ms);
    let churner = std::thread::Builder::new()
        .name("churner".into())
        .spawn(move || churn(until))
        .unwrap();
    let keeper = std::thread::Builder::new()
        .name("keeper".into())
        .spawn(move || keep(until))
        .unwrap();
    let churned = churner.join().unwrap();
    let (asked, held, kept) = keeper.join().unwrap();
    println!("done {churned} {asked} {held} {}", kept.len());
    loop {
        std::thread::park();
    }
}
