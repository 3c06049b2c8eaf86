//! The cratedigger HTTP front end: a JSON API over one [`engine::Engine`], described by the
//! OpenAPI document it serves at `/api/openapi.json`, and a web page (plain HTML, CSS and
//! JavaScript built into the binary) that draws what a song samples on a timeline.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let engine = engine::Engine::open(std::path::Path::new("/data/cratedigger"))?;
//! let config = server::ServerConfig::new("/data/cratedigger/uploads".into());
//! server::run(config, engine, |addr| println!("listening on http://{addr}"))?;
//! # Ok(())
//! # }
//! ```
//!
//! Safe by default: it binds to loopback, caps request bodies, times requests out, bounds
//! the audio decoded at once (503 with `Retry-After` beyond), refuses every write unless a
//! token was configured, and never lets a request name a file: uploads are stored under
//! names the server derives from their content, and audio is served by track id.
//!
//! The engine's calls are blocking CPU work; they run on tokio's blocking threads, each
//! holding a permit of a bounded semaphore, never on the executor's threads.

mod api;
mod auth;
mod catalogue;
mod error;
mod jobs;
mod uploads;
mod waveform;
mod web;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use engine::Engine;

pub use api::{RouteSpec, routes};
pub use waveform::{Waveform, envelope};

/// The OpenAPI 3 document describing every route, as served at `/api/openapi.json`.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Environment variable holding the token that write endpoints require.
pub const TOKEN_ENV: &str = "CRATEDIGGER_TOKEN";

/// How the server runs. Build with [`ServerConfig::new`] and change fields as needed;
/// [`Server::bind`] rejects values that make no sense.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Where to listen; loopback unless the operator chooses otherwise.
    pub bind: SocketAddr,
    /// The bearer token write endpoints require; `None` refuses every write.
    pub token: Option<String>,
    /// Largest request body accepted (an uploaded song), in bytes; larger is 413.
    pub max_upload_bytes: u64,
    /// How many requests may decode audio at once (identify, waveforms); more is 503.
    pub max_concurrent_identify: usize,
    /// The folder uploaded references are stored in, under names the server chooses.
    pub upload_dir: PathBuf,
    /// A request still unanswered after this long gets 408.
    pub request_timeout: Duration,
    /// Longest audio decoded, in seconds: decoded audio takes 64 KB per second, so this
    /// bounds the memory one upload can claim.
    pub max_audio_s: f64,
}

/// Default port of `cratedigger serve`.
pub const DEFAULT_PORT: u16 = 8080;

impl ServerConfig {
    /// The defaults: 127.0.0.1:8080, no token (read-only), 100 MB uploads, two decodes at
    /// once, 5 minute requests, one hour of audio.
    pub fn new(upload_dir: PathBuf) -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            token: None,
            max_upload_bytes: 100 * 1024 * 1024,
            max_concurrent_identify: 2,
            upload_dir,
            request_timeout: Duration::from_secs(300),
            max_audio_s: 3600.0,
        }
    }

    fn validate(&self) -> Result<(), ServerError> {
        let bad = |why: &str| Err(ServerError::InvalidConfig(why.to_string()));
        if self.token.as_deref().is_some_and(|t| t.trim().is_empty()) {
            return bad("the token is empty; give a non-empty token or none");
        }
        if self.max_upload_bytes == 0 {
            return bad("the upload limit must be at least one byte");
        }
        if self.max_concurrent_identify == 0 {
            return bad("at least one identify must be allowed at a time");
        }
        if self.request_timeout.is_zero() {
            return bad("the request timeout must be positive");
        }
        if !(self.max_audio_s.is_finite() && self.max_audio_s > 0.0) {
            return bad("the audio length limit must be a positive number of seconds");
        }
        Ok(())
    }
}

/// Errors that stop the server from starting or running.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration value makes no sense; fix the flag named.
    #[error("invalid server configuration: {0}")]
    InvalidConfig(String),
    /// The address could not be bound (in use, or not this machine's).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The upload folder cannot be created or read.
    #[error("upload folder {}: {source}", path.display())]
    UploadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The store could not be read at startup.
    #[error("store: {0}")]
    Store(String),
    /// The server failed while running, or the async runtime could not start.
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// A server bound to its address, ready to serve.
pub struct Server {
    listener: tokio::net::TcpListener,
    router: axum::Router,
    addr: SocketAddr,
}

impl Server {
    /// Checks the configuration, prepares the upload folder and binds the address (port 0
    /// picks a free one; see [`Server::local_addr`]). Must run inside a tokio runtime.
    pub async fn bind(config: ServerConfig, mut engine: Engine) -> Result<Self, ServerError> {
        config.validate()?;
        engine.set_max_duration_s(config.max_audio_s);
        let upload_dir_error = |source| ServerError::UploadDir {
            path: config.upload_dir.clone(),
            source,
        };
        let uploads = uploads::Uploads::open(&config.upload_dir).map_err(upload_dir_error)?;
        // Uploads a crash stored but never indexed would otherwise stay forever. Store calls
        // block (a cluster store runs its own runtime), so they go to a blocking thread.
        let (engine, tracks) = tokio::task::spawn_blocking(move || {
            let tracks = engine.store().tracks();
            (engine, tracks)
        })
        .await
        .map_err(|e| ServerError::Store(e.to_string()))?;
        let catalogued: std::collections::HashSet<PathBuf> = tracks
            .map_err(|e| ServerError::Store(e.to_string()))?
            .into_iter()
            .map(|(_, info)| PathBuf::from(info.path))
            .collect();
        uploads
            .remove_orphans(|path| catalogued.contains(path))
            .map_err(upload_dir_error)?;
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|source| ServerError::Bind {
                addr: config.bind,
                source,
            })?;
        let addr = listener.local_addr()?;
        let state = api::AppState::new(config, Arc::new(engine), uploads);
        Ok(Self {
            listener,
            router: api::router(state),
            addr,
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` completes, then finishes the requests under way.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok(())
    }
}

/// Runs a server on its own runtime until Ctrl-C or SIGTERM; `on_ready` is told the bound
/// address once requests can be made.
pub fn run(
    config: ServerConfig,
    engine: Engine,
    on_ready: impl FnOnce(SocketAddr),
) -> Result<(), ServerError> {
    // Two executor threads are plenty for IO; the engine's work runs on blocking threads
    // bounded by the server's semaphores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let server = Server::bind(config, engine).await?;
        on_ready(server.local_addr());
        server.serve(shutdown_signal()).await
    })
}

/// Completes on Ctrl-C or, on Unix, SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        // If the handler cannot be installed, only SIGTERM (or a kill) stops the server.
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}
