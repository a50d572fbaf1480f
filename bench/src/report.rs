//! Results as CSV, a Markdown summary and SVG charts, in bench/results/.

use crate::exactness::Outcome;
use crate::memory::Footprint;
use crate::throughput::Row;
use crate::weighted::{CostRow, HotRow};
use std::fmt::Write;
use std::path::Path;

pub struct Results {
    pub machine: String,
    pub throughput: Vec<Row>,
    pub scaling: Vec<(u64, f64, f64)>,
    pub memory: Vec<(Footprint, Footprint)>,
    /// The script twin's footprint at the same sizes as `memory`.
    pub twin_memory: Vec<Footprint>,
    pub headline: Option<(Footprint, Footprint)>,
    /// The headline's keys with each key's requests sent back to back.
    pub burst: Option<Footprint>,
    pub costs: Vec<CostRow>,
    pub hot: Vec<HotRow>,
    pub exactness: Vec<Outcome>,
}

/// Writes the files of the sections that ran, leaving the others' files
/// from earlier runs as they were; summary.md describes this run.
/// Writes each section's files; `summary.md` only when `complete` (every
/// section ran), so a run of some sections leaves the others' summary.
pub fn write(results: &Results, dir: &Path, complete: bool) -> std::io::Result<String> {
    std::fs::create_dir_all(dir)?;
    if !results.throughput.is_empty() || !results.scaling.is_empty() {
        std::fs::write(dir.join("throughput.csv"), throughput_csv(results))?;
        std::fs::write(dir.join("cpu.svg"), cpu_chart(results))?;
    }
    if !results.memory.is_empty() {
        std::fs::write(dir.join("memory.csv"), memory_csv(results))?;
        std::fs::write(dir.join("memory.svg"), memory_chart(results))?;
    }
    if !results.costs.is_empty() {
        std::fs::write(dir.join("weighted.csv"), weighted_csv(results))?;
    }
    if !results.exactness.is_empty() {
        std::fs::write(dir.join("exactness.csv"), exactness_csv(results))?;
    }
    let summary = summary(results);
    if complete {
        std::fs::write(dir.join("summary.md"), &summary)?;
    }
    Ok(summary)
}

fn baseline<'a>(rows: &'a [Row], row: &Row) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.depth == row.depth && r.scenario.name == row.scenario.baseline)
}

fn throughput_csv(results: &Results) -> String {
    let mut out = String::from("approach,depth,ops_per_sec,ops_min,ops_max,p50_ms,p99_ms,server_usec_per_request,usec_min,usec_max,ops_ratio_to_incr,cpu_ratio_to_incr\n");
    for row in &results.throughput {
        let base = baseline(&results.throughput, row);
        let (ops_ratio, cpu_ratio) = base.map_or((0.0, 0.0), |b| {
            (
                row.ops.median / b.ops.median,
                row.usec.median / b.usec.median,
            )
        });
        let _ = writeln!(
            out,
            "\"{}\",{},{:.0},{:.0},{:.0},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3},{:.3}",
            row.scenario.name,
            row.depth,
            row.ops.median,
            row.ops.min,
            row.ops.max,
            row.p50_ms.median,
            row.p99_ms.median,
            row.usec.median,
            row.usec.min,
            row.usec.max,
            ops_ratio,
            cpu_ratio
        );
    }
    let _ = writeln!(out, "\nentries_per_key,check_usec,lua_usec");
    for (size, module, lua) in &results.scaling {
        let _ = writeln!(out, "{size},{module:.3},{lua:.3}");
    }
    out
}

fn memory_csv(results: &Results) -> String {
    let mut out = String::from(
        "store,entries_per_key,keys,bytes_per_key,bytes_per_request,memory_usage_one_key\n",
    );
    let pairs = results.memory.iter().chain(results.headline.iter());
    let rows = pairs
        .flat_map(|(module, zset)| [("module", module), ("sorted set", zset)])
        .chain(
            results
                .burst
                .iter()
                .map(|f| ("module, requests back to back", f)),
        )
        .chain(results.twin_memory.iter().map(|f| ("script twin", f)));
    for (name, f) in rows {
        let _ = writeln!(
            out,
            "{name},{},{},{:.1},{:.2},{}",
            f.entries_per_key, f.keys, f.per_key, f.per_request, f.memory_usage
        );
    }
    out
}

fn weighted_csv(results: &Results) -> String {
    let mut out = String::from(
        "cost,keys,requests_per_key,check_usec,bytes_per_request,memory_usage_per_request,log_bytes_per_request\n",
    );
    for r in &results.costs {
        let _ = writeln!(
            out,
            "{},{},{},{:.3},{:.2},{:.2},{:.2}",
            r.cost,
            r.keys,
            r.requests_per_key,
            r.usec,
            r.bytes_per_request,
            r.memory_usage_per_request,
            r.log_bytes_per_request
        );
    }
    let _ = writeln!(out, "\nhot_key_precision,seconds,requests,memory_usage");
    for h in &results.hot {
        let _ = writeln!(
            out,
            "{},{:.1},{},{}",
            h.precision.map_or("exact".into(), |p| p.to_string()),
            h.seconds,
            h.requests,
            h.memory_usage
        );
    }
    out
}

const EXACTNESS_COLUMNS: [&str; 7] = [
    "approach",
    "window ms",
    "max",
    "calls",
    "admitted",
    "most in a window",
    "over-admission",
];

fn exactness_fields(o: &Outcome) -> [String; 7] {
    [
        o.approach.to_string(),
        o.window_ms.to_string(),
        o.max.to_string(),
        o.calls.to_string(),
        o.admitted.to_string(),
        o.most_in_a_window.to_string(),
        o.over_admission().to_string(),
    ]
}

fn exactness_csv(results: &Results) -> String {
    let header = EXACTNESS_COLUMNS.map(|c| c.replace([' ', '-'], "_"));
    let mut out = header.join(",") + "\n";
    for o in &results.exactness {
        let _ = writeln!(out, "{}", exactness_fields(o).join(","));
    }
    out
}

fn summary(results: &Results) -> String {
    let mut md = String::new();
    let _ = writeln!(md, "# Benchmark results\n\n{}\n", results.machine);
    let _ = writeln!(md, "Ratios, not absolute numbers, are the point: every row ran against the same server in the same run, interleaved. Medians of the repeats, with (min–max).\n");
    let _ = writeln!(md, "## Throughput and server CPU per logical request\n");
    let _ = writeln!(md, "| approach | depth | ops/s | ×INCR ops/s | p50 ms | p99 ms | server µs/request | ×INCR CPU |");
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|");
    for row in &results.throughput {
        let base = baseline(&results.throughput, row);
        let ratio =
            |f: fn(&Row) -> f64| base.map_or("".into(), |b| format!("{:.2}", f(row) / f(b)));
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {:.3} | {:.3} | {} | {} |",
            row.scenario.name,
            row.depth,
            row.ops.show(0),
            ratio(|r| r.ops.median),
            row.p50_ms.median,
            row.p99_ms.median,
            row.usec.show(2),
            ratio(|r| r.usec.median)
        );
    }
    let _ = writeln!(md, "\nThe client-side pipeline runs on this harness's own clients (50 threads), so it is compared with INCR on the same clients; the other rows use redis-benchmark (-c 50, 10k random keys). Its server CPU is the sum over ZREMRANGEBYSCORE, ZCARD, ZADD, EXPIRE and ZREMRANGEBYRANK per logical request.\n");
    if !results.scaling.is_empty() {
        let _ = writeln!(md, "## Server CPU per call against the size of the log\n\n| entries in the key | RATELIMIT.CHECK µs | Lua sliding log µs |\n|---:|---:|---:|");
        for (size, module, lua) in &results.scaling {
            let _ = writeln!(md, "| {size} | {module:.2} | {lua:.2} |");
        }
        md.push('\n');
    }
    if !results.memory.is_empty() {
        let _ = writeln!(
            md,
            "## Memory\n\n`used_memory` growth over the keys, and `MEMORY USAGE` of one key.\n"
        );
        let _ = writeln!(md, "| entries per key | keys | module B/key | module B/request | sorted set B/key | sorted set B/request | MEMORY USAGE module / sorted set |");
        let _ = writeln!(md, "|---:|---:|---:|---:|---:|---:|---:|");
        for (m, z) in &results.memory {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} | {:.2} | {:.0} | {:.2} | {} / {} |",
                m.entries_per_key,
                m.keys,
                m.per_key,
                m.per_request,
                z.per_key,
                z.per_request,
                m.memory_usage,
                z.memory_usage
            );
        }
        let total = |f: &Footprint| f.per_key * f.keys as f64 / 1_048_576.0;
        if let Some((m, z)) = &results.headline {
            let _ = writeln!(md, "\n**{} active limiter keys × {} requests each, at distinct moments:** module {:.0} MiB, sorted set {:.0} MiB ({:.1}× less).\n", m.keys, m.entries_per_key, total(m), total(z), total(z) / total(m));
        }
        if let Some(b) = &results.burst {
            let _ = writeln!(md, "The same keys with each key's {} requests sent back to back (those in one millisecond share an entry): {:.0} MiB, {:.0} B/key.\n", b.entries_per_key, total(b), b.per_key);
        }
        if !results.twin_memory.is_empty() {
            let _ = writeln!(md, "The script twin (FCALL), the same requests at distinct moments:\n\n| entries per key | keys | twin B/key | twin B/request | ×module | ÷sorted set | MEMORY USAGE |\n|---:|---:|---:|---:|---:|---:|---:|");
            for (t, (m, z)) in results.twin_memory.iter().zip(&results.memory) {
                let _ = writeln!(
                    md,
                    "| {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {} |",
                    t.entries_per_key,
                    t.keys,
                    t.per_key,
                    t.per_request,
                    t.per_request / m.per_request,
                    z.per_request / t.per_request,
                    t.memory_usage
                );
            }
            md.push('\n');
        }
    }
    if !results.costs.is_empty() {
        let _ = writeln!(md, "## Weighted requests\n\nEvery request its own entry (a pass over the keys, then a pause); window 60 s, a budget no row reaches.\n\n| COST | keys × requests | server µs/CHECK | ×COST 1 | B/request (used_memory) | B/request (MEMORY USAGE of one key) | log B/request (each request after the first) |\n|---:|---:|---:|---:|---:|---:|---:|");
        let unit = results.costs[0].usec;
        for r in &results.costs {
            let _ = writeln!(
                md,
                "| {} | {} × {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                r.cost,
                r.keys,
                r.requests_per_key,
                r.usec,
                r.usec / unit,
                r.bytes_per_request,
                r.memory_usage_per_request,
                r.log_bytes_per_request
            );
        }
        let _ = writeln!(md, "\n## A hot key\n\nOne key, window 1 hour, as many CHECKs as one pipelined connection sends.\n\n| | seconds | requests | MEMORY USAGE |\n|---|---:|---:|---:|");
        for h in &results.hot {
            let _ = writeln!(
                md,
                "| {} | {:.1} | {} | {} |",
                h.precision
                    .map_or("exact".into(), |p| format!("PRECISION {p}")),
                h.seconds,
                h.requests,
                h.memory_usage
            );
        }
        md.push('\n');
    }
    if !results.exactness.is_empty() {
        let _ = writeln!(md, "## Exactness under concurrency\n\nConcurrent clients on one key; the most requests admitted in any window of the given length, from each approach's own decisions.\n");
        let _ = writeln!(
            md,
            "| {} |\n|---|---:|---:|---:|---:|---:|---:|",
            EXACTNESS_COLUMNS.join(" | ")
        );
        for o in &results.exactness {
            let _ = writeln!(md, "| {} |", exactness_fields(o).join(" | "));
        }
    }
    md
}

/// A horizontal bar chart as SVG text.
fn bar_chart(title: &str, unit: &str, bars: &[(String, f64)]) -> String {
    let (label_width, bar_width, row) = (330.0, 420.0, 26.0);
    let top = 40.0;
    let height = top + row * bars.len() as f64 + 20.0;
    let most = bars
        .iter()
        .map(|b| b.1)
        .fold(0.0, f64::max)
        .max(f64::MIN_POSITIVE);
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"13\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">{title}</text>\n",
        w = label_width + bar_width + 110.0
    );
    for (i, (label, value)) in bars.iter().enumerate() {
        let y = top + row * i as f64;
        let length = bar_width * value / most;
        let _ = writeln!(
            svg,
            "<text x=\"{x}\" y=\"{ty}\" text-anchor=\"end\">{label}</text><rect x=\"{bx}\" y=\"{y}\" width=\"{length:.1}\" height=\"18\" fill=\"{color}\"/><text x=\"{vx:.1}\" y=\"{ty}\">{value:.2} {unit}</text>",
            x = label_width - 8.0,
            ty = y + 14.0,
            bx = label_width,
            color = if label.contains("RATELIMIT") || label.starts_with("module") { "#c0392b" } else { "#7f8c8d" },
            vx = label_width + length + 6.0,
        );
    }
    svg.push_str("</svg>\n");
    svg
}

fn cpu_chart(results: &Results) -> String {
    let bars: Vec<(String, f64)> = results
        .throughput
        .iter()
        .filter(|r| r.depth == 1 && !r.scenario.name.contains("harness"))
        .map(|r| (r.scenario.name.clone(), r.usec.median))
        .collect();
    bar_chart(
        "Server CPU per logical request (µs, pipeline depth 1)",
        "µs",
        &bars,
    )
}

fn memory_chart(results: &Results) -> String {
    let bars: Vec<(String, f64)> = results
        .memory
        .iter()
        .flat_map(|(m, z)| {
            [
                (
                    format!("module, {} entries/key", m.entries_per_key),
                    m.per_request,
                ),
                (
                    format!("sorted set, {} entries/key", z.entries_per_key),
                    z.per_request,
                ),
            ]
        })
        .collect();
    bar_chart(
        "Bytes per recorded request (used_memory growth)",
        "B",
        &bars,
    )
}
