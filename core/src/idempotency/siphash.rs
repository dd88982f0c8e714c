//! SipHash-2-4 with 128-bit output (Aumasson & Bernstein), keyed by the store's secret seed.
//!
//! A keyed PRF is what the store needs: clients cannot predict identities (so they cannot aim keys
//! at one shard or forge a collision with another client's entry) nor craft two bodies with one
//! fingerprint, without knowing the seed. It costs no dependency and little code.

#[derive(Clone)]
pub struct Sip128 {
    v: [u64; 4],
    tail: u64,
    tail_len: u32,
    total: u64,
}

impl Sip128 {
    pub fn new(key: &[u8; 16]) -> Sip128 {
        let (k0, k1) = split_key(key);
        Sip128 {
            v: [
                k0 ^ 0x736f_6d65_7073_6575,
                k1 ^ 0x646f_7261_6e64_6f83, // ^ 0xee: the 128-bit variant
                k0 ^ 0x6c79_6765_6e65_7261,
                k1 ^ 0x7465_6462_7974_6573,
            ],
            tail: 0,
            tail_len: 0,
            total: 0,
        }
    }

    fn round(&mut self) {
        let [mut v0, mut v1, mut v2, mut v3] = self.v;
        v0 = v0.wrapping_add(v1);
        v1 = v1.rotate_left(13) ^ v0;
        v0 = v0.rotate_left(32);
        v2 = v2.wrapping_add(v3);
        v3 = v3.rotate_left(16) ^ v2;
        v0 = v0.wrapping_add(v3);
        v3 = v3.rotate_left(21) ^ v0;
        v2 = v2.wrapping_add(v1);
        v1 = v1.rotate_left(17) ^ v2;
        v2 = v2.rotate_left(32);
        self.v = [v0, v1, v2, v3];
    }

    fn compress(&mut self, m: u64) {
        self.v[3] ^= m;
        self.round();
        self.round();
        self.v[0] ^= m;
    }

    pub fn write(&mut self, mut data: &[u8]) {
        self.total = self.total.wrapping_add(data.len() as u64);
        while self.tail_len > 0 && !data.is_empty() {
            if let Some((&b, rest)) = data.split_first() {
                self.tail |= u64::from(b) << (8 * self.tail_len);
                self.tail_len += 1;
                data = rest;
            }
            if self.tail_len == 8 {
                let m = self.tail;
                self.compress(m);
                self.tail = 0;
                self.tail_len = 0;
            }
        }
        if self.tail_len > 0 {
            return; // all of `data` went into the partial word
        }
        let mut chunks = data.chunks_exact(8);
        for chunk in &mut chunks {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            self.compress(u64::from_le_bytes(word));
        }
        for (i, &b) in chunks.remainder().iter().enumerate() {
            self.tail |= u64::from(b) << (8 * i);
        }
        self.tail_len = chunks.remainder().len() as u32;
    }

    /// Writes a length-prefixed field, so field boundaries cannot be shifted between fields.
    pub fn write_field(&mut self, data: &[u8]) {
        self.write(&(data.len() as u64).to_le_bytes());
        self.write(data);
    }

    pub fn finish(mut self) -> [u8; 16] {
        let m = self.tail | ((self.total & 0xff) << 56);
        self.compress(m);
        self.v[2] ^= 0xee;
        for _ in 0..4 {
            self.round();
        }
        let low = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        self.v[1] ^= 0xdd;
        for _ in 0..4 {
            self.round();
        }
        let high = self.v[0] ^ self.v[1] ^ self.v[2] ^ self.v[3];
        ((u128::from(high) << 64) | u128::from(low)).to_le_bytes()
    }
}

fn split_key(key: &[u8; 16]) -> (u64, u64) {
    let k = u128::from_le_bytes(*key);
    (k as u64, (k >> 64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    fn sip(data: &[u8]) -> [u8; 16] {
        let mut h = Sip128::new(&key());
        h.write(data);
        h.finish()
    }

    #[test]
    fn matches_the_reference_vectors() {
        // vectors_sip128 of the reference implementation: key 00..0f, message 00..(len-1).
        let input: Vec<u8> = (0..64).collect();
        let cases: [(usize, [u8; 16]); 4] = [
            (
                0,
                [
                    0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25, 0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14, 0xc7,
                    0x55, 0x02, 0x93,
                ],
            ),
            (
                1,
                [
                    0xda, 0x87, 0xc1, 0xd8, 0x6b, 0x99, 0xaf, 0x44, 0x34, 0x76, 0x59, 0x11, 0x9b,
                    0x22, 0xfc, 0x45,
                ],
            ),
            (
                15,
                [
                    0x54, 0x93, 0xe9, 0x99, 0x33, 0xb0, 0xa8, 0x11, 0x7e, 0x08, 0xec, 0x0f, 0x97,
                    0xcf, 0xc3, 0xd9,
                ],
            ),
            (
                16,
                [
                    0x6e, 0xe2, 0xa4, 0xca, 0x67, 0xb0, 0x54, 0xbb, 0xfd, 0x33, 0x15, 0xbf, 0x85,
                    0x23, 0x05, 0x77,
                ],
            ),
        ];
        for (len, want) in cases {
            assert_eq!(sip(&input[..len]), want, "len {len}");
        }
    }

    #[test]
    fn streaming_equals_one_shot() {
        let input: Vec<u8> = (0..=255).cycle().take(1000).collect();
        let whole = sip(&input);
        for split in [1usize, 3, 7, 8, 9, 500] {
            let mut h = Sip128::new(&key());
            for chunk in input.chunks(split) {
                h.write(chunk);
            }
            assert_eq!(h.finish(), whole, "chunks of {split}");
        }
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        let hash = |a: &[u8], b: &[u8]| {
            let mut h = Sip128::new(&key());
            h.write_field(a);
            h.write_field(b);
            h.finish()
        };
        assert_ne!(hash(b"ab", b"c"), hash(b"a", b"bc"));
    }
}
