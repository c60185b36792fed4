//! Coalescing: a burst of concurrent cold GETs of one uncached blob, as
//! when a fleet of nodes pulls a new image at once. A pull-through cache
//! should fetch it upstream once and stream it to everyone.

use std::time::{Duration, Instant};

use super::servers::Server;
use super::support::hubsim::HubSim;
use super::{COLD_CLIENTS, FETCH_TIMEOUT, Fixture, http, wait_for_distribution};

/// What a burst of cold GETs cost.
pub struct Coalescing {
    upstream_fetches: u64,
    clients_ok: usize,
    errors: Vec<String>,
    elapsed: Duration,
}

/// `COLD_CLIENTS` concurrent GETs of the uncached `digest` through `server`,
/// each on its own connection; counts the simulator's CDN GETs (each one is
/// a full upstream download of the blob).
pub fn run(
    rt: &tokio::runtime::Runtime,
    sim: &HubSim,
    server: &Server,
    digest: &str,
) -> Result<Coalescing, String> {
    let client = http::client();
    let url = format!("{}{}", server.url, Fixture::blob_path(digest));
    sim.reset_counters();
    let started = Instant::now();
    let results = rt.block_on(futures_util::future::join_all(
        (0..COLD_CLIENTS).map(|_| http::get_checked(&client, &url, None, digest, FETCH_TIMEOUT)),
    ));
    let elapsed = started.elapsed();
    if server.name == "distribution" {
        // Its own copy is a separate background download; let it finish.
        wait_for_distribution(server, digest)?;
    } else {
        std::thread::sleep(Duration::from_millis(200));
    }
    let errors: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    Ok(Coalescing {
        upstream_fetches: sim.counters().cdn_gets,
        clients_ok: COLD_CLIENTS - errors.len(),
        errors,
        elapsed,
    })
}

/// Prints one line per server, plus any client failures.
pub fn print(name: &str, result: &Result<Coalescing, String>) {
    match result {
        Err(e) => println!("  {name:<13} failed: {e}"),
        Ok(c) => {
            println!(
                "  {name:<13} upstream fetches: {:<3} clients with correct bytes: {}/{}   {:.2} s",
                c.upstream_fetches,
                c.clients_ok,
                COLD_CLIENTS,
                c.elapsed.as_secs_f64()
            );
            for e in &c.errors {
                println!("  {name:<13}   client error: {e}");
            }
        }
    }
}
