//! Spreading keys over lock shards, so unrelated channels rarely contend.

pub const SHARDS: usize = 64;

/// FNV-1a: cheap and good enough to spread channel names over shards.
pub fn shard_of(key: &str) -> usize {
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in key.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    (hash as usize) % SHARDS
}
