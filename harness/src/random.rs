/// A small xorshift: tests and benchmarks need cheap, repeatable, not
/// strong, randomness.
pub struct Random(u64);

impl Random {
    pub fn seeded(seed: u64) -> Random {
        Random(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Below `n` (not exactly uniform, which is fine here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}
