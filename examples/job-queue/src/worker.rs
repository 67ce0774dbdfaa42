//! The worker process: claims jobs from the API, runs them, and publishes every step through
//! Herald's HTTP API (`/api/publish`, `/api/batch`), as a worker written in any language would.

use crate::Job;
use anyhow::{bail, Context};
use serde_json::{json, Value};
use std::time::Duration;

const MAX_ATTEMPTS: u32 = 3;

pub struct Options {
    app: String,
    api_key: String,
    work: Duration,
}

impl Options {
    /// `--app URL` (default http://127.0.0.1:3002); the API key comes from `HERALD_HTTP_API_KEY`
    /// (default: the demo key), the time a job takes from `WORK_MS` (default 1500).
    pub fn from_args(args: &[String]) -> anyhow::Result<Self> {
        let mut app = "http://127.0.0.1:3002".to_owned();
        let mut rest = args.iter();
        while let Some(arg) = rest.next() {
            match arg.as_str() {
                "--app" => app = rest.next().context("--app needs a URL")?.trim_end_matches('/').to_owned(),
                other => bail!("unknown worker argument {other:?}"),
            }
        }
        let api_key = std::env::var("HERALD_HTTP_API_KEY").unwrap_or_else(|_| "job-queue-demo-api-key".into());
        let work_ms = match std::env::var("WORK_MS") {
            Ok(text) => text.parse().with_context(|| format!("WORK_MS={text:?} is not a number of milliseconds"))?,
            Err(_) => 1500,
        };
        Ok(Self { app, api_key, work: Duration::from_millis(work_ms) })
    }
}

struct Worker {
    http: reqwest::Client,
    options: Options,
}

impl Worker {
    async fn post(&self, path: &str, body: &Value) -> anyhow::Result<reqwest::Response> {
        let url = format!("{}{path}", self.options.app);
        let response = self
            .http
            .post(&url)
            .header("X-API-Key", &self.options.api_key)
            .json(body)
            .send()
            .await
            .with_context(|| format!("POST {url}"))?;
        if !response.status().is_success() {
            let status = response.status();
            bail!("POST {url}: HTTP {status}: {}", response.text().await.unwrap_or_default());
        }
        Ok(response)
    }

    /// A Herald API call; Herald answers errors inside a 200 as `{"error": ...}`.
    async fn herald(&self, method: &str, body: Value) -> anyhow::Result<Value> {
        let answer: Value = self.post(&format!("/api/{method}"), &body).await?.json().await?;
        if let Some(error) = answer.get("error") {
            bail!("herald {method}: {error}");
        }
        Ok(answer)
    }

    /// Records the job's state with the API, then tells its owner (and admins).
    async fn step(&self, job: &mut Job, status: &str, detail: Value) -> anyhow::Result<()> {
        job.status = status.to_owned();
        job.seq += 1;
        self.post("/app/worker/report", &serde_json::to_value(&*job)?).await?;
        self.herald(
            "publish",
            json!({
                "channel": "jobs:events",
                "data": {"kind": status, "job": job, "detail": detail},
                "audience": {"users": [job.user]},
                "priority": if status == "failed" { "high" } else { "normal" },
            }),
        )
        .await?;
        Ok(())
    }

    /// Position 0 for the claimed job, 1.. for the ones behind it, in one batch call.
    async fn publish_positions(&self, claimed: u64, waiting: &[u64]) -> anyhow::Result<()> {
        let commands: Vec<Value> = std::iter::once(claimed)
            .chain(waiting.iter().copied())
            .enumerate()
            .map(|(position, id)| {
                json!({"publish": {
                    "channel": "queue:positions",
                    "data": {"job_id": id, "position": position},
                    "tags": {"job_id": id.to_string()},
                }})
            })
            .collect();
        let answer = self.herald("batch", json!({"commands": commands})).await?;
        if let Some(failed) = answer["replies"].as_array().and_then(|r| r.iter().find(|r| r.get("error").is_some())) {
            bail!("queue position not published: {failed}");
        }
        Ok(())
    }

    async fn run_job(&self, mut job: Job) -> anyhow::Result<()> {
        for attempt in 1..=MAX_ATTEMPTS {
            job.attempt = attempt;
            self.step(&mut job, "started", json!({})).await?;
            tokio::time::sleep(self.options.work).await; // the "work"
            let succeeded = match job.kind.as_str() {
                "flaky" => attempt >= 2,
                "broken" => false,
                _ => true,
            };
            if succeeded {
                return self.step(&mut job, "completed", json!({})).await;
            }
            let error = format!("attempt {attempt} failed: simulated {} failure", job.kind);
            if attempt < MAX_ATTEMPTS {
                self.step(&mut job, "retried", json!({"error": error})).await?;
            } else {
                return self.step(&mut job, "failed", json!({"error": error})).await;
            }
        }
        Ok(())
    }
}

pub async fn run(options: Options) -> anyhow::Result<()> {
    println!("worker: taking jobs from {}", options.app);
    let worker = Worker { http: reqwest::Client::new(), options };
    let mut unreachable_since: Option<std::time::Instant> = None;
    loop {
        let claimed = match worker.post("/app/worker/claim", &json!({})).await {
            Ok(response) => {
                unreachable_since = None;
                if response.status() == reqwest::StatusCode::NO_CONTENT {
                    continue;
                }
                response.json::<Value>().await.context("claim answer")?
            }
            Err(error) => {
                // The API is gone (stopped, or it never came up): give up after a while.
                let since = *unreachable_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > Duration::from_secs(5) {
                    bail!("the API is unreachable: {error:#}");
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let job: Job = serde_json::from_value(claimed["job"].clone()).context("claimed job")?;
        let waiting: Vec<u64> = serde_json::from_value(claimed["waiting"].clone()).context("waiting jobs")?;
        if let Err(error) = worker.publish_positions(job.id, &waiting).await {
            eprintln!("worker: {error:#}");
        }
        let id = job.id;
        if let Err(error) = worker.run_job(job).await {
            eprintln!("worker: job {id}: {error:#}");
        }
    }
}
