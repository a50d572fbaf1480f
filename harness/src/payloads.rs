//! DUMP payloads of logs built entry by entry, in the RDB encoding the
//! server's module writes (version 3: window, entry count, oldest time,
//! entries, the block's end; version 2: no block), and of token buckets,
//! with a valid checksum: what a hostile or corrupt payload can hold,
//! which the server's own checksum does not refuse.

use crate::commands::run;
use redis::Connection;

// Module value opcodes in an RDB payload.
const EOF: u8 = 0;
const UINT: u8 = 2;
const STRING: u8 = 5;

/// The server's clock, in unix milliseconds (`TIME`).
pub fn server_clock_ms(con: &mut Connection) -> i64 {
    let [seconds, micros]: [String; 2] = run(con, &["TIME"]);
    let (seconds, micros): (i64, i64) = (
        seconds.parse().expect("TIME seconds"),
        micros.parse().expect("TIME microseconds"),
    );
    seconds * 1000 + micros / 1000
}

/// A payload for a log with `window` and these `(time, cost)` entries, in
/// order as given (gaps are taken as unsigned: times must not decrease).
pub fn log_payload(con: &mut Connection, window: u64, entries: &[(i64, u64)]) -> Vec<u8> {
    blocked_log_payload(con, window, entries, 0)
}

/// As [`log_payload`], for a key blocked until `blocked_until` (0: none).
pub fn blocked_log_payload(
    con: &mut Connection,
    window: u64,
    entries: &[(i64, u64)],
    blocked_until: i64,
) -> Vec<u8> {
    let template = ["RATELIMIT.CHECK", "payload:template", "1000", "1"];
    payload_like(con, &template, |payload, version| {
        let oldest = entries.first().map_or(0, |e| e.0);
        // Signed numbers are saved as unsigned ones of the same bits.
        for value in [window, entries.len() as u64, oldest as u64] {
            payload.push(UINT);
            push_rdb_length(payload, value);
        }
        let mut bytes = Vec::new();
        let mut previous = oldest;
        for &(at, cost) in entries {
            let gap = at.abs_diff(previous);
            push_varint(&mut bytes, gap << 1 | u64::from(cost != 1));
            if cost != 1 {
                push_varint(&mut bytes, cost << 1 | 1);
            }
            previous = at;
        }
        payload.push(STRING);
        push_rdb_length(payload, bytes.len() as u64);
        payload.extend(&bytes);
        // From version 3 the block follows the entries.
        if version >= 3 {
            payload.push(UINT);
            push_rdb_length(payload, blocked_until as u64);
        } else {
            assert_eq!(blocked_until, 0, "version {version} has no block");
        }
    })
}

/// A payload for a token bucket (`gcralimit`, encoding version 1): the
/// time of its last charge, its period and its level, whatever they are.
pub fn bucket_payload(con: &mut Connection, at: i64, period: u64, level: u64) -> Vec<u8> {
    let template = ["RATELIMIT.GCRA", "payload:template", "0", "1", "1"];
    payload_like(con, &template, |payload, _| {
        for value in [at as u64, period, level] {
            payload.push(UINT);
            push_rdb_length(payload, value);
        }
    })
}

/// A payload of the module type that `template` (a command on key
/// `payload:template`) creates, holding what `value` writes (given the
/// type's encoding version), with this server's RDB version and a valid
/// checksum.
fn payload_like(
    con: &mut Connection,
    template: &[&str],
    value: impl FnOnce(&mut Vec<u8>, u64),
) -> Vec<u8> {
    run::<redis::Value>(con, template);
    let template: Vec<u8> = run(con, &["DUMP", "payload:template"]);
    run::<i64>(con, &["DEL", "payload:template"]);
    // The value type and the module type's id, as this server wrote them;
    // the id ends in the type's encoding version (10 bits).
    let mut payload = template[..10].to_vec();
    let version = u64::from_be_bytes(template[2..10].try_into().expect("8 bytes")) & 1023;
    value(&mut payload, version);
    payload.push(EOF);
    // The RDB version from the template, then the checksum of it all.
    payload.extend(&template[template.len() - 10..template.len() - 8]);
    let crc = crc64(&payload);
    payload.extend(crc.to_le_bytes());
    payload
}

/// RESTORE of `payload` under `key` (replacing it, no expiry).
pub fn restore(con: &mut Connection, key: &str, payload: &[u8]) -> redis::RedisResult<String> {
    redis::cmd("RESTORE")
        .arg(key)
        .arg(0)
        .arg(payload)
        .arg("REPLACE")
        .query(con)
}

fn push_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push(value as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Redis's RDB length encoding.
fn push_rdb_length(out: &mut Vec<u8>, value: u64) {
    match value {
        0..=63 => out.push(value as u8),
        64..=16_383 => out.extend([0x40 | (value >> 8) as u8, value as u8]),
        16_384..=0xffff_ffff => {
            out.push(0x80);
            out.extend((value as u32).to_be_bytes());
        }
        _ => {
            out.push(0x81);
            out.extend(value.to_be_bytes());
        }
    }
}

/// CRC-64/Jones (reflected, no final xor), as DUMP payloads carry it.
fn crc64(data: &[u8]) -> u64 {
    const POLY: u64 = 0x95ac_9329_ac4b_c9b5;
    let mut crc = 0u64;
    for &byte in data {
        crc ^= u64::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                crc >> 1 ^ POLY
            } else {
                crc >> 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    #[test]
    fn crc64_is_redis_jones() {
        assert_eq!(super::crc64(b"123456789"), 0xe9c6_d914_c4b8_d9ca);
    }
}
