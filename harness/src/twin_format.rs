//! The script twin's stored values, read and written in Rust: what a
//! value means (`decode`, with the twin's own rules for what it could have
//! written), and values built from a meaning (`small`, `legacy`, `paged`),
//! for tests that feed the twin values it did not write and benchmarks
//! that need logs of a million entries. The layouts are described at the
//! top of twin/ratelimit.lua.

/// What a twin value holds: its window, its live entries (time, cost),
/// oldest first, and the block's end (0: none).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TwinLog {
    pub window: u64,
    pub entries: Vec<(i64, u64)>,
    pub blocked_until: i64,
}

const MAX_WINDOW: u64 = 31_536_000_000;
const EXACT: u64 = 1 << 53;
const LATEST: i64 = 1 << 47;
/// The most bytes of entries a small value holds.
pub const SMALL_LIMIT: usize = 256;
/// A paged value's page: bytes of entries, and the header before them.
pub const PAGE: usize = 128;
const PAGE_HEAD: usize = 17;
const RING_HEADER: usize = 85;
/// How many bytes of entries of a 0.3 value the twin still reads.
const LEGACY: usize = 16_384;
const MAX_ENTRIES: u64 = 1_000_000;

/// Why a value is not one the twin could have written.
pub type Invalid = String;

fn le(bytes: &[u8], at: usize, width: usize) -> Result<u64, Invalid> {
    let field = bytes
        .get(at..at + width)
        .ok_or_else(|| format!("{width} bytes at {at} past the value's end"))?;
    Ok(field.iter().rev().fold(0u64, |n, &b| n << 8 | u64::from(b)))
}

fn put(out: &mut Vec<u8>, n: u64, width: usize) {
    out.extend((0..width).map(|i| (n >> (8 * i)) as u8));
}

/// A flagged varint, as the twin writes it.
fn varint(out: &mut Vec<u8>, n: u64, flag: u8) {
    let low = (n % 64) as u8;
    let mut rest = n / 64;
    if rest == 0 {
        out.push(low * 2 + flag);
        return;
    }
    out.push(low * 2 + flag + 128);
    while rest >= 128 {
        out.push((rest % 128) as u8 + 128);
        rest /= 128;
    }
    out.push(rest as u8);
}

fn entry(out: &mut Vec<u8>, gap: u64, cost: u64) {
    if cost == 1 {
        varint(out, gap, 0);
    } else {
        varint(out, gap, 1);
        varint(out, cost, 1);
    }
}

/// Entries encoded as the twin does, the first with gap 0.
fn entry_bytes(entries: &[(i64, u64)]) -> Vec<u8> {
    let mut out = vec![];
    for (i, &(at, cost)) in entries.iter().enumerate() {
        let gap = if i == 0 { 0 } else { at - entries[i - 1].0 };
        entry(&mut out, gap as u64, cost);
    }
    out
}

/// One varint from `bytes[*i..]`: its value and flag, checked as the twin
/// checks it (at most 8 bytes, no needless last byte).
fn read_varint(bytes: &[u8], i: &mut usize) -> Result<(u64, u8), Invalid> {
    let first = *bytes.get(*i).ok_or("a varint past the end")?;
    *i += 1;
    let flag = first % 2;
    let mut n = u64::from(first % 128 / 2);
    if first < 128 {
        return Ok((n, flag));
    }
    let mut shift = 6;
    loop {
        if shift > 48 {
            return Err("a varint longer than 8 bytes".into());
        }
        let b = *bytes.get(*i).ok_or("a varint past the end")?;
        *i += 1;
        n |= u64::from(b % 128) << shift;
        shift += 7;
        if b < 128 {
            if b == 0 {
                return Err("a varint with a needless last byte".into());
            }
            return Ok((n, flag));
        }
    }
}

/// Entries from `bytes` (a zero byte where an entry would start ends them
/// with `padded`), the first at `first`: (time, cost, offset) each.
fn read_entries(bytes: &[u8], first: i64, padded: bool) -> Result<Vec<(i64, u64, usize)>, Invalid> {
    let mut entries: Vec<(i64, u64, usize)> = vec![];
    let mut i = 0;
    while i < bytes.len() {
        if padded && bytes[i] == 0 && !entries.is_empty() {
            break;
        }
        let start = i;
        let (gap, flag) = read_varint(bytes, &mut i)?;
        let mut cost = 1;
        if flag == 1 {
            let (c, cost_flag) = read_varint(bytes, &mut i)?;
            if cost_flag != 1 || c < 2 {
                return Err(format!("a cost of {c} (flag {cost_flag})"));
            }
            cost = c;
        }
        let at = match entries.last() {
            None => first,
            Some(_) if gap < 1 => return Err("a gap of 0".into()),
            Some(&(previous, _, _)) => previous + gap as i64,
        };
        entries.push((at, cost, start));
    }
    Ok(entries)
}

/// The checks every small log meets, whatever its header.
fn small_log(
    window: u64,
    oldest: i64,
    blocked_until: i64,
    entries: &[(i64, u64, usize)],
) -> Result<TwinLog, Invalid> {
    let sum: u64 = entries.iter().map(|e| e.1).sum();
    if !(1..=MAX_WINDOW).contains(&window) || oldest > LATEST || blocked_until > LATEST {
        return Err(format!(
            "window {window}, oldest {oldest} or block {blocked_until} out of range"
        ));
    }
    if entries.is_empty() && blocked_until == 0 {
        return Err("no entry and no block".into());
    }
    if let Some(&(newest, _, _)) = entries.last() {
        if (newest - oldest) as u64 >= window || sum > EXACT {
            return Err(format!(
                "a span of {} in window {window}, or a sum of {sum}",
                newest - oldest
            ));
        }
    }
    Ok(TwinLog {
        window,
        entries: entries.iter().map(|&(at, cost, _)| (at, cost)).collect(),
        blocked_until,
    })
}

/// What `value` means, or why the twin could not have written it.
pub fn decode(value: &[u8]) -> Result<TwinLog, Invalid> {
    decode_paged_by(value, PAGE)
}

/// `decode` for a twin whose pages hold `page` bytes of entries (tests
/// shrink them).
pub fn decode_paged_by(value: &[u8], page: usize) -> Result<TwinLog, Invalid> {
    match value {
        [b'r', b'l', 1 | 2, ..] => decode_legacy(value),
        [b'r', b'l', 3, ..] => decode_paged(value, page),
        [b'r', b'l', magic @ (4 | 5), ..] => {
            let base = if *magic == 5 { 20 } else { 14 };
            if value.len() < base || value.len() > base + SMALL_LIMIT {
                return Err(format!("a small value of {} bytes", value.len()));
            }
            let blocked = if *magic == 5 {
                le(value, 14, 6)? as i64
            } else {
                0
            };
            if *magic == 5 && blocked == 0 {
                return Err("a blocked value with no block".into());
            }
            let oldest = le(value, 8, 6)? as i64;
            let entries = read_entries(&value[base..], oldest, false)?;
            small_log(le(value, 3, 5)?, oldest, blocked, &entries)
        }
        _ => Err("not a twin value".into()),
    }
}

fn decode_legacy(value: &[u8]) -> Result<TwinLog, Invalid> {
    let blocked_form = value[2] == 2;
    let base = if blocked_form { 40 } else { 34 };
    let [window, head, tail, newest, span, total] =
        [(3, 5), (8, 4), (12, 4), (16, 6), (22, 5), (27, 7)]
            .map(|(at, width)| le(value, at, width));
    let (window, head, tail, newest, span, total) = (
        window?,
        head? as usize,
        tail? as usize,
        newest? as i64,
        span? as i64,
        total?,
    );
    let blocked = if blocked_form {
        le(value, 34, 6)? as i64
    } else {
        0
    };
    if head < base
        || tail < head
        || span > newest
        || blocked_form != (blocked > 0)
        || tail - head > LEGACY
    {
        return Err(format!(
            "head {head}, tail {tail}, span {span} or block {blocked}"
        ));
    }
    let region = value
        .get(head..tail)
        .ok_or("entries past the value's end")?;
    let entries = read_entries(region, newest - span, false)?;
    let log = small_log(window, newest - span, blocked, &entries)?;
    let sum: u64 = log.entries.iter().map(|e| e.1).sum();
    if sum != total || log.entries.last().is_some_and(|e| e.0 != newest) {
        return Err(format!(
            "a total of {total} over entries of {sum}, or a newest of {newest}"
        ));
    }
    Ok(log)
}

/// A paged value, all of it: every field checked against the pages.
fn decode_paged(value: &[u8], page: usize) -> Result<TwinLog, Invalid> {
    let field = |at: usize, width: usize| le(value, at, width);
    let window = field(3, 5)?;
    let (newest, oldest) = (field(8, 6)? as i64, field(14, 6)? as i64);
    let (total, count, blocked) = (field(20, 7)?, field(27, 4)?, field(31, 6)? as i64);
    let (head, used, last) = (
        field(37, 2)? as usize,
        field(39, 2)? as usize,
        field(41, 2)? as usize,
    );
    let (tail_first, tail_cost, tail_count) = (field(43, 6)? as i64, field(49, 7)?, field(56, 4)?);
    let (end_cost, end_count, slots) = (field(60, 7)?, field(67, 4)?, field(71, 2)? as usize);
    let mut pages = vec![];
    for run in 0..3 {
        let (start, length) = (
            field(73 + 4 * run, 2)? as usize,
            field(75 + 4 * run, 2)? as usize,
        );
        pages.extend(start..start + length);
    }
    let mut seen = pages.clone();
    seen.sort_unstable();
    seen.dedup();
    if pages.is_empty() || seen.len() != pages.len() || pages.iter().any(|&s| s >= slots) {
        return Err(format!("runs over slots {pages:?} of {slots}"));
    }
    let slots_at = RING_HEADER + page;
    if value.len() < slots_at + slots * (PAGE_HEAD + page)
        || used == 0
        || used > page
        || head >= page
    {
        return Err(format!(
            "{} bytes for {slots} slots, used {used}, head {head}",
            value.len()
        ));
    }
    let mut entries: Vec<(i64, u64)> = vec![];
    let mut cost_before = 0u64;
    let mut count_before = 0u64;
    for (i, &slot) in pages.iter().enumerate() {
        let at = slots_at + slot * (PAGE_HEAD + page);
        let (first, cost, count) = (
            le(value, at, 6)? as i64,
            le(value, at + 6, 7)?,
            le(value, at + 13, 4)?,
        );
        let body = &value[at + PAGE_HEAD..at + PAGE_HEAD + page];
        let read = read_entries(body, first, true)?;
        let live: Vec<_> = if i == 0 {
            let from = read
                .iter()
                .position(|e| e.2 == head)
                .ok_or("head is not an entry")?;
            let dead: u64 = read[..from].iter().map(|e| e.1).sum();
            cost_before = (cost + dead) % EXACT;
            count_before = (count + from as u64) % (1 << 32);
            if read[from].0 != oldest {
                return Err("the first live entry is not at the oldest time".into());
            }
            read[from..].to_vec()
        } else {
            let expected = (cost_before + entries.iter().map(|e| e.1).sum::<u64>()) % EXACT;
            if cost != expected || count != (count_before + entries.len() as u64) % (1 << 32) {
                return Err(format!(
                    "page {i}: cost {cost} (expected {expected}) or count {count}"
                ));
            }
            read
        };
        entries.extend(live.iter().map(|&(t, c, _)| (t, c)));
    }
    let tail = read_entries(&value[RING_HEADER..RING_HEADER + used], tail_first, false)?;
    let tail_sum_before = (cost_before + entries.iter().map(|e| e.1).sum::<u64>()) % EXACT;
    if tail_cost != tail_sum_before
        || tail_count != (count_before + entries.len() as u64) % (1 << 32)
    {
        return Err("the tail's cost or count before it".into());
    }
    if tail.last().map(|e| e.2) != Some(last) {
        return Err("the newest entry is not at `last`".into());
    }
    entries.extend(tail.iter().map(|&(t, c, _)| (t, c)));
    let sum: u64 = entries.iter().map(|e| e.1).sum();
    let ordered = entries.windows(2).all(|w| w[0].0 < w[1].0);
    if !ordered
        || sum != total
        || entries.len() as u64 != count
        || count > MAX_ENTRIES
        || entries.last().map(|e| e.0) != Some(newest)
        || end_cost != (cost_before + sum) % EXACT
        || end_count != (count_before + count) % (1 << 32)
    {
        return Err("the header's sums, count or newest against the pages".into());
    }
    let log = small_log(
        window,
        oldest,
        blocked,
        &entries.iter().map(|&(t, c)| (t, c, 0)).collect::<Vec<_>>(),
    )?;
    Ok(log)
}

/// The twin's small value for `log` (its entries must fit in
/// SMALL_LIMIT bytes).
pub fn small(log: &TwinLog) -> Vec<u8> {
    let blocked = log.blocked_until > 0;
    let mut out = vec![b'r', b'l', if blocked { 5 } else { 4 }];
    put(&mut out, log.window, 5);
    put(&mut out, log.entries.first().map_or(0, |e| e.0) as u64, 6);
    if blocked {
        put(&mut out, log.blocked_until as u64, 6);
    }
    let body = entry_bytes(&log.entries);
    assert!(
        body.len() <= SMALL_LIMIT,
        "{} bytes of entries: not a small value",
        body.len()
    );
    out.extend(body);
    out
}

/// Release 0.3's value for `log` (`rl\1`, or `rl\2` with a block).
pub fn legacy(log: &TwinLog) -> Vec<u8> {
    let blocked = log.blocked_until > 0;
    let base = if blocked { 40 } else { 34 };
    let body = entry_bytes(&log.entries);
    let newest = log.entries.last().map_or(0, |e| e.0);
    let oldest = log.entries.first().map_or(0, |e| e.0);
    let mut out = vec![b'r', b'l', if blocked { 2 } else { 1 }];
    put(&mut out, log.window, 5);
    put(&mut out, base as u64, 4);
    put(&mut out, (base + body.len()) as u64, 4);
    put(&mut out, newest as u64, 6);
    put(&mut out, (newest - oldest) as u64, 5);
    put(&mut out, log.entries.iter().map(|e| e.1).sum(), 7);
    if blocked {
        put(&mut out, log.blocked_until as u64, 6);
    }
    out.extend(body);
    out
}

/// The twin's paged value for `log` (at least two pages of entries), its
/// sealed pages in one run of slots.
pub fn paged(log: &TwinLog) -> Vec<u8> {
    // Pages of at most PAGE bytes, each page's first entry with gap 0: the
    // index of its first entry, its bytes, and its last entry's offset.
    let mut pages: Vec<(usize, Vec<u8>, usize)> = vec![];
    for (i, &(at, cost)) in log.entries.iter().enumerate() {
        let mut bytes = vec![];
        let gap = if i == 0 {
            0
        } else {
            (at - log.entries[i - 1].0) as u64
        };
        entry(&mut bytes, gap, cost);
        match pages.last_mut() {
            Some((_, page, last)) if page.len() + bytes.len() <= PAGE => {
                *last = page.len();
                page.extend(bytes);
            }
            _ => {
                let mut first = vec![];
                entry(&mut first, 0, cost);
                pages.push((i, first, 0));
            }
        }
    }
    assert!(pages.len() >= 2, "a paged value holds more than a page");
    let before = |i: usize| -> (u64, u64) {
        let cost: u64 = log.entries[..i].iter().map(|e| e.1).sum();
        (cost % EXACT, i as u64)
    };
    let (tail_start, tail, last) = pages.pop().expect("a tail page");
    let fields: [(u64, usize); 15] = [
        (log.window, 5),
        (log.entries.last().map_or(0, |e| e.0) as u64, 6),
        (log.entries[0].0 as u64, 6),
        (log.entries.iter().map(|e| e.1).sum(), 7),
        (log.entries.len() as u64, 4),
        (log.blocked_until as u64, 6),
        (0, 2),
        (tail.len() as u64, 2),
        (last as u64, 2),
        (log.entries[tail_start].0 as u64, 6),
        (before(tail_start).0, 7),
        (before(tail_start).1, 4),
        (before(log.entries.len()).0, 7),
        (before(log.entries.len()).1, 4),
        (pages.len() as u64, 2),
    ];
    let mut out = vec![b'r', b'l', 3];
    for (n, width) in fields {
        put(&mut out, n, width);
    }
    for (start, count) in [(0, pages.len()), (0, 0), (0, 0)] {
        put(&mut out, start as u64, 2);
        put(&mut out, count as u64, 2);
    }
    debug_assert_eq!(out.len(), RING_HEADER);
    out.extend(&tail);
    out.resize(RING_HEADER + PAGE, 0);
    for (start, page, _) in pages {
        let (cost, count) = before(start);
        put(&mut out, log.entries[start].0 as u64, 6);
        put(&mut out, cost, 7);
        put(&mut out, count, 4);
        let at = out.len();
        out.extend(page);
        out.resize(at + PAGE, 0);
    }
    out
}

/// The value the twin would hold for `log`: small if its entries fit.
pub fn canonical(log: &TwinLog) -> Vec<u8> {
    if entry_bytes(&log.entries).len() <= SMALL_LIMIT {
        small(log)
    } else {
        paged(log)
    }
}
