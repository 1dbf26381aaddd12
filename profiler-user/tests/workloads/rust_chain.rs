//! Rust workload, release build with frame pointers forced: the hot
//! function is a generic method whose demangled name the test looks for.
use std::hint::black_box;
use std::time::{Duration, Instant};

mod engine {
    pub struct Hasher<const N: usize>;

    impl<const N: usize> Hasher<N> {
        #[inline(never)]
        pub fn crunch_numbers(&self, seed: u64) -> u64 {
            let mut acc = seed;
            for i in 0..200_000u64 {
                acc = acc.wrapping_mul(6364136223846793005).wrapping_add(i) ^ (acc >> 29);
            }
            super::finish(acc)
        }
    }
}

#[inline(never)]
fn finish(x: u64) -> u64 {
    black_box(x.rotate_left(13))
}

#[inline(never)]
fn drive(seed: u64) -> u64 {
    engine::Hasher::<8>.crunch_numbers(black_box(seed))
}

fn main() {
    let ms: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(5000);
    let start = Instant::now();
    let mut seed = 1;
    while start.elapsed() < Duration::from_millis(ms) {
        seed = drive(seed);
    }
    black_box(seed);
}
