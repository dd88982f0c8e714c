//! A seeded, bounded randomized test: generated header sets and configs never trap the filter.

use host_tests::{Host, Profile, Request, UpstreamAction};

/// A seeded generator (rand's StdRng), so a run is replayed by its seed.
pub(crate) struct Rng(rand::rngs::StdRng);

impl Rng {
    pub(crate) fn seeded(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }
    pub(crate) fn next(&mut self) -> u64 {
        rand::RngExt::random(&mut self.0)
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        rand::RngExt::random_range(&mut self.0, 0..n.max(1))
    }
    pub(crate) fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
    pub(crate) fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

const NAMES: &[&str] = &[
    ":method",
    ":path",
    ":authority",
    "x-envoy-retry-on",
    "x-envoy-max-retries",
    "X-Envoy-Retriable-Status-Codes",
    "idempotency-key",
    "authorization",
    "content-type",
    "x-envoy-",
    "",
    "\u{0}",
];
const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "get", "", "CONNECT", "QUERY",
];

fn headers(rng: &mut Rng) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut h = Vec::new();
    if rng.below(10) > 0 {
        h.push((b":method".to_vec(), rng.pick(METHODS).as_bytes().to_vec()));
    }
    for _ in 0..rng.below(12) {
        let name = match rng.below(3) {
            0 => rng.bytes(20),
            _ => rng.pick(NAMES).as_bytes().to_vec(),
        };
        let value = match rng.below(20) {
            0 => vec![b'a'; 70_000],
            1..=5 => rng.bytes(40),
            _ => rng
                .pick(&[
                    "reset",
                    "10",
                    "-1",
                    "5xx,reset",
                    "\"k\"",
                    "99999999999999999999",
                ])
                .as_bytes()
                .to_vec(),
        };
        h.push((name, value));
    }
    if rng.below(4) == 0 && !h.is_empty() {
        let dup = h[0].clone();
        h.push(dup);
    }
    h
}

fn json(rng: &mut Rng, depth: u32) -> String {
    let keys = [
        "retry",
        "max_retries",
        "on",
        "idempotent_methods",
        "client_abort",
        "log_level",
        "filter_state",
        "idempotency",
        "mode",
        "per_try_timeout_ms",
        "retriable_status_codes",
        "trust_client_retry_headers",
    ];
    match if depth > 2 {
        rng.below(4)
    } else {
        rng.below(7)
    } {
        0 => rng.below(20).to_string(),
        1 => format!("{:?}", rng.pick(&["reset", "GET", "off", "enforce", ""])),
        2 => "true".into(),
        3 => "null".into(),
        4 => format!(
            "[{}]",
            (0..rng.below(3))
                .map(|_| json(rng, depth + 1))
                .collect::<Vec<_>>()
                .join(",")
        ),
        _ => format!(
            "{{{}}}",
            (0..rng.below(4))
                .map(|_| format!(
                    "{:?}:{}",
                    keys[rng.below(keys.len() as u64) as usize],
                    json(rng, depth + 1)
                ))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}

#[test]
fn thousands_of_generated_requests_and_configs_never_trap() {
    let mut rng = Rng::seeded(0x5eed_1234_abcd_0001);
    let mut host = Host::builder().config("").start().unwrap();
    let mut configs = 0;
    for case in 0..3_000 {
        if case % 100 == 0 {
            // A fresh host with a generated config (or raw bytes) every 100 cases.
            let profile = Profile::ALL[rng.below(3) as usize];
            let raw = if rng.below(5) == 0 {
                rng.bytes(64)
            } else {
                json(&mut rng, 0).into_bytes()
            };
            host = Host::builder()
                .profile(profile)
                .config_bytes(&raw)
                .start()
                .unwrap_or_else(|e| {
                    panic!(
                        "case {case} config {:?}: {e}",
                        String::from_utf8_lossy(&raw)
                    )
                });
            configs += 1;
        }
        let plan = match rng.below(4) {
            0 => vec![UpstreamAction::ResetBeforeHeaders],
            1 => vec![UpstreamAction::Refuse, UpstreamAction::ok("ok")],
            2 => vec![UpstreamAction::ResetMidBody {
                status: 200,
                headers: vec![],
                body_prefix: b"x".to_vec(),
            }],
            _ => vec![UpstreamAction::ok("ok")],
        };
        let mut request = Request::raw(headers(&mut rng))
            .upstream(plan)
            .body(&rng.bytes(32));
        if rng.below(5) == 0 {
            request = request.abort_after(0);
        }
        if let Err(e) = host.try_exchange(request) {
            panic!("case {case}: {e}");
        }
    }
    assert_eq!(configs, 30);
}
