//! `herald-bench table`: `fanout --json` lines (one run per target) to a markdown table with
//! ratios against a baseline (Herald by default).

use anyhow::Result;
use clap::Args;
use serde_json::Value;
use std::io::BufRead;

#[derive(Args, Debug)]
pub struct TableArgs {
    /// Label of the row the ratios are computed against (default: the first label starting
    /// with "herald").
    #[arg(long)]
    baseline: Option<String>,
    /// Add a row marked "pending" for a target that was not measured (repeatable).
    #[arg(long)]
    pending: Vec<String>,
}

pub fn run(args: &TableArgs) -> Result<()> {
    let mut rows = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        if let Ok(row) = serde_json::from_str::<Value>(line.trim()) {
            if row.get("deliveries_per_sec").is_some() {
                rows.push(row);
            }
        }
    }
    print!("{}", render(&rows, args.baseline.as_deref(), &args.pending));
    Ok(())
}

fn label(row: &Value) -> &str {
    row["label"].as_str().or(row["target"].as_str()).unwrap_or("?")
}

fn render(rows: &[Value], baseline: Option<&str>, pending: &[String]) -> String {
    let base = match baseline {
        Some(name) => rows.iter().find(|row| label(row) == name),
        None => rows.iter().find(|row| label(row).starts_with("herald")),
    };
    let num = |row: &Value, key: &str| row[key].as_f64().unwrap_or(f64::NAN);
    let p = |row: &Value, q: &str| row["latency_ms"][q].as_f64().unwrap_or(f64::NAN);
    let base_name = base.map_or("herald".to_owned(), |row| label(row).to_owned());
    let mut out = format!(
        "| target | deliveries/s | missing | p50 ms | p90 ms | p99 ms | max ms | connect ms | server CPU µs/pub | deliveries/s vs {base_name} | p99 vs {base_name} |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for name in pending {
        out.push_str(&format!("| {name} | pending | | | | | | | | | |\n"));
    }
    for row in rows {
        let ratio = |value: f64, base_value: Option<f64>| match base_value {
            Some(b) if b > 0.0 && value.is_finite() => format!("{:.2}", value / b),
            _ => "n/a".to_owned(),
        };
        let status = row["status"].as_str().filter(|s| *s != "ok").map(|s| format!(" ({s})")).unwrap_or_default();
        out.push_str(&format!(
            "| {}{status} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
            label(row),
            thousands(num(row, "deliveries_per_sec")),
            row["missing"],
            p(row, "p50"),
            p(row, "p90"),
            p(row, "p99"),
            p(row, "max"),
            row["connect_ms"],
            row["server_cpu_us_per_publication"].as_f64().map_or("n/a".to_owned(), thousands),
            ratio(num(row, "deliveries_per_sec"), base.map(|b| num(b, "deliveries_per_sec"))),
            ratio(p(row, "p99"), base.map(|b| p(b, "p99"))),
        ));
    }
    out
}

pub fn thousands(value: f64) -> String {
    if !value.is_finite() {
        return "?".to_owned();
    }
    let digits = format!("{:.0}", value.abs());
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::{render, thousands};
    use serde_json::json;

    #[test]
    fn ratios_against_herald() {
        let lat = |p99: f64| json!({"p50": 1.0, "p90": 2.0, "p99": p99, "max": 9.0});
        let rows = [
            json!({"label": "herald", "deliveries_per_sec": 200000.0, "missing": 0, "latency_ms": lat(10.0), "connect_ms": 5, "status": "ok"}),
            json!({"label": "nats", "deliveries_per_sec": 100000.0, "missing": 3, "latency_ms": lat(20.0), "connect_ms": 7, "server_cpu_us_per_publication": 1500.0, "status": "3 deliveries missing (idle)"}),
        ];
        let table = render(&rows, None, &[]);
        assert!(table.contains("| herald | 200,000 | 0 | 1 | 2 | 10 | 9 | 5 | n/a | 1.00 | 1.00 |"), "{table}");
        assert!(
            table.contains(
                "| nats (3 deliveries missing (idle)) | 100,000 | 3 | 1 | 2 | 20 | 9 | 7 | 1,500 | 0.50 | 2.00 |"
            ),
            "{table}"
        );
        let pending = render(&rows[1..], None, &["herald".to_owned()]);
        assert!(pending.contains("| herald | pending |"), "{pending}");
        assert!(pending.contains("| n/a | n/a |"), "{pending}");
        assert_eq!(thousands(1234567.0), "1,234,567");
        assert_eq!(thousands(12.0), "12");
    }
}
