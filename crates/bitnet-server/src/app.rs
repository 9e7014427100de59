//! The application: shared state, the router with its middleware, and `serve` with graceful
//! shutdown.

use crate::config::{total_memory, ServeConfig};
use crate::engine::{EngineConfig, EngineHandle};
use crate::error::{envelope_errors, ApiError};
use crate::metrics::EngineMetrics;
use crate::routes;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use bitnet_engine::{ChatTemplate, Model, SamplingParams, Tokenizer};
use metrics_exporter_prometheus::PrometheusHandle;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

/// Errors starting the server.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Loading the model or tokenizer failed.
    #[error("loading {path}: {source}")]
    Load {
        /// The model path.
        path: std::path::PathBuf,
        /// The cause (boxed: engine errors carry shapes and paths).
        source: Box<bitnet_engine::Error>,
    },
    /// The settings do not fit the model.
    #[error("{0}")]
    Config(String),
    /// Binding or serving failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        source: std::io::Error,
    },
}

/// A loaded model ready to serve.
pub struct Loaded {
    /// The id clients use.
    pub model_id: String,
    /// The tokenizer.
    pub tok: Arc<Tokenizer>,
    /// The chat template, if the model has one.
    pub template: Option<ChatTemplate>,
    /// The engine thread.
    pub engine: EngineHandle,
    /// Sampling defaults (OpenAI's, over the model's generation config).
    pub defaults: SamplingParams,
    /// Context window.
    pub ctx: usize,
    /// Vocabulary size.
    pub vocab: usize,
    /// `system_fingerprint`.
    pub fingerprint: String,
}

/// State shared by all handlers.
pub struct AppState {
    /// Settings.
    pub config: ServeConfig,
    /// Set once the model is loaded (`/ready` answers 503 until then).
    pub loaded: OnceLock<Arc<Loaded>>,
    /// Metrics renderer.
    pub prometheus: Option<PrometheusHandle>,
    /// Server start, Unix seconds.
    pub started: u64,
    /// API keys, limits and metering (`None`: an open server).
    pub tenancy: Option<Arc<bitnet_tenancy::Tenancy>>,
}

impl AppState {
    /// The loaded model, or a 503 while loading.
    pub fn loaded(&self) -> Result<Arc<Loaded>, ApiError> {
        self.loaded
            .get()
            .cloned()
            .ok_or_else(|| ApiError::overloaded("The model is still loading", 5))
    }

    /// The loaded model if `requested` names it (or is absent); 404 otherwise.
    pub fn model_for(&self, requested: Option<&str>) -> Result<Arc<Loaded>, ApiError> {
        let l = self.loaded()?;
        match requested {
            Some(m) if !m.is_empty() && m != l.model_id => {
                Err(ApiError::model_not_found(m, &l.model_id))
            }
            _ => Ok(l),
        }
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Loads the model and starts the engine thread (blocking; call from a blocking task).
pub fn load(config: &ServeConfig) -> Result<Loaded, ServeError> {
    let t = Instant::now();
    let path = &config.model;
    let err = |source| ServeError::Load {
        path: path.clone(),
        source: Box::new(source),
    };
    let (mut model, tok) = Model::load_with_tokenizer(path).map_err(err)?;
    let placement = model.use_device(config.device).map_err(err)?;
    tracing::info!("device: {}", placement.description);
    let template = ChatTemplate::for_model(&model.config, &tok).ok();
    let max_ctx = model.config.max_position_embeddings;
    let ctx = config.ctx.unwrap_or(max_ctx);
    if ctx > max_ctx {
        return Err(ServeError::Config(format!(
            "--ctx {ctx} exceeds the model's context of {max_ctx} tokens"
        )));
    }
    let bytes_per_token = model.kv_bytes_per_position(config.kv_type);
    let kv_tokens = match config.kv_tokens {
        Some(k) => k,
        None => {
            let want = config.max_batch * ctx;
            // The cache lives on the device that runs the model: half of what is free there
            // (on a GPU, after the weights), or half the machine's memory.
            let budget = match model.gpu_memory() {
                Some((free, _)) => Some(free as u64),
                None => total_memory(),
            };
            let cap = budget
                .map(|m| (m / 2 / bytes_per_token as u64) as usize)
                .unwrap_or(want);
            want.min(cap).max(ctx)
        }
    };
    if kv_tokens < ctx {
        return Err(ServeError::Config(format!(
            "--kv-tokens {kv_tokens} is smaller than the context of {ctx} tokens"
        )));
    }
    let mut defaults = SamplingParams {
        temperature: 1.0,
        ..Default::default()
    };
    if path.is_dir() {
        let gc = path.join("generation_config.json");
        if let Ok(p) = SamplingParams::from_generation_config(&gc) {
            if gc.is_file() && p.temperature > 0.0 {
                defaults = p;
            } else {
                defaults.repeat_penalty = p.repeat_penalty;
            }
        }
    }
    let vocab = model.config.vocab_size;
    let model = Arc::new(model);
    let tok = Arc::new(tok);
    let engine_config = EngineConfig {
        max_batch: config.max_batch,
        step_tokens: config.step_tokens.max(config.max_batch),
        kv_tokens,
        kv_type: config.kv_type,
        max_queue: config.max_queue,
        max_queue_tokens: config.max_queue_tokens,
        queue_timeout: config.queue_timeout,
        ctx,
    };
    let engine = EngineHandle::start(
        model,
        tok.clone(),
        engine_config,
        EngineMetrics::new(&config.model_name),
    )
    .map_err(|source| ServeError::Io {
        what: "starting the engine thread".into(),
        source,
    })?;
    tracing::info!(
        "loaded {} in {:.2} s: ctx {ctx}, KV budget {kv_tokens} tokens ({:.2} GiB, {}), \
         max batch {}, kernel {}",
        path.display(),
        t.elapsed().as_secs_f64(),
        (kv_tokens * bytes_per_token) as f64 / (1u64 << 30) as f64,
        // On a GPU the device cache's type is BITNET_CUDA_KV's, not --kv-type's.
        if placement.gpu {
            "device cache"
        } else {
            config.kv_type.name()
        },
        config.max_batch,
        if placement.gpu {
            placement.description.as_str()
        } else {
            bitnet_kernels::dispatch::active().name()
        }
    );
    Ok(Loaded {
        model_id: config.model_name.clone(),
        tok,
        template,
        engine,
        defaults,
        ctx,
        vocab,
        fingerprint: format!(
            "fp_bitnet_rust_{}_{}",
            env!("CARGO_PKG_VERSION"),
            if placement.gpu {
                "cuda"
            } else {
                bitnet_kernels::dispatch::active().name()
            }
        ),
    })
}

/// The router with all routes and middleware.
pub fn router(state: Arc<AppState>) -> Router {
    let x_request_id = HeaderName::from_static("x-request-id");
    let timeout = state.config.request_timeout;
    let limit = state.config.body_limit;
    Router::new()
        .route("/v1/chat/completions", post(routes::chat::chat_completions))
        .route("/v1/completions", post(routes::completions::completions))
        .route("/v1/models", get(routes::misc::models))
        .route("/v1/models/{model}", get(routes::misc::model))
        .route("/v1/stream", get(routes::ws::stream))
        .route("/tokenize", post(routes::misc::tokenize))
        .route("/detokenize", post(routes::misc::detokenize))
        .route("/health", get(routes::misc::health))
        .route("/ready", get(routes::misc::ready))
        .route("/metrics", get(routes::misc::metrics))
        .route("/openapi.json", get(routes::misc::openapi))
        .route(
            "/admin/tenants",
            get(routes::admin::tenants).post(routes::admin::create_tenant),
        )
        .route(
            "/admin/keys",
            get(routes::admin::keys).post(routes::admin::create_key),
        )
        .route(
            "/admin/keys/{id}",
            get(routes::admin::key)
                .patch(routes::admin::update_key)
                .delete(routes::admin::delete_key),
        )
        .route("/admin/keys/{id}/rotate", post(routes::admin::rotate_key))
        .route("/admin/usage", get(routes::admin::usage))
        .route("/admin/audit", get(routes::admin::audit))
        .route("/admin/webhooks", get(routes::admin::webhooks))
        .route(
            "/v1/files",
            get(routes::batches::files).post(routes::batches::upload),
        )
        .route(
            "/v1/files/{id}",
            get(routes::batches::file).delete(routes::batches::delete_file),
        )
        .route("/v1/files/{id}/content", get(routes::batches::file_content))
        .route(
            "/v1/batches",
            get(routes::batches::batches).post(routes::batches::create_batch),
        )
        .route("/v1/batches/{id}", get(routes::batches::batch))
        .route(
            "/v1/batches/{id}/cancel",
            post(routes::batches::cancel_batch),
        )
        .fallback(routes::misc::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::tenancy::authenticate,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn(envelope_errors))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(CatchPanicLayer::custom(|_| {
            axum::response::IntoResponse::into_response(ApiError::internal(
                "internal error: the handler panicked",
            ))
        }))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// Binds, loads the model in the background (`/ready` is 503 until it is loaded) and serves
/// until SIGTERM or ctrl-c; then stops accepting, lets running requests finish for the grace
/// period and cancels the rest.
pub async fn serve(config: ServeConfig) -> Result<(), ServeError> {
    let addr = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Io {
            what: format!("binding {addr}"),
            source,
        })?;
    let local = listener.local_addr().map_err(|source| ServeError::Io {
        what: "reading the bound address".into(),
        source,
    })?;
    serve_on(listener, config, shutdown_signal(), move |_| {
        eprintln!("bitnet serve: listening on http://{local}");
    })
    .await
}

/// [`serve`] on a bound listener, stopping when `shutdown` resolves; `on_ready` runs once
/// the model is loaded.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&Loaded) + Send + 'static,
) -> Result<(), ServeError> {
    let prometheus = crate::metrics::install();
    if let Some(h) = prometheus.clone() {
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tick.tick().await;
                h.run_upkeep();
            }
        });
    }
    let grace = config.shutdown_grace;
    let tenancy = match &config.tenancy {
        Some(tc) => {
            let t = bitnet_tenancy::Tenancy::open(tc)
                .await
                .map_err(|e| ServeError::Config(format!("multi-tenancy: {e}")))?;
            tracing::info!(
                "API keys required; store {:?}, rate limits {}, usage journal {}",
                t.store.backend(),
                if tc.redis_url.is_some() {
                    "in Redis (shared by replicas)"
                } else {
                    "in this process"
                },
                tc.journal_dir.display()
            );
            Some(t)
        }
        None => None,
    };
    let state = Arc::new(AppState {
        config,
        loaded: OnceLock::new(),
        prometheus,
        started: unix_now(),
        tenancy,
    });
    let loader = {
        let state = state.clone();
        tokio::task::spawn_blocking(move || {
            let loaded = load(&state.config)?;
            on_ready(&loaded);
            let _ = state.loaded.set(Arc::new(loaded));
            Ok::<(), ServeError>(())
        })
    };
    let app = router(state.clone());
    // Stored batches run in this process (any replica may run any batch, one at a time).
    let stop_batches = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runner = state.tenancy.clone().map(|t| {
        let r =
            crate::batch::Runner::new(t, app.clone(), state.config.max_batch, stop_batches.clone());
        tokio::spawn(r.run())
    });
    let drain_state = state.clone();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let stop_runner = stop_batches.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        shutdown.await;
        stop_runner.store(true, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            "shutting down: draining for up to {:.0} s",
            grace.as_secs_f64()
        );
        if let Some(l) = drain_state.loaded.get() {
            l.engine.drain(grace);
        }
        let _ = stop_tx.send(());
    });
    let server = tokio::spawn(async move { server.await });
    // A failed load ends the server with the error.
    let load_result = tokio::select! {
        r = loader => Some(r),
        _ = stop_rx => None,
    };
    if let Some(r) = load_result {
        match r {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(ServeError::Config(format!("model loader panicked: {e}"))),
        }
    }
    let served = server.await;
    stop_batches.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Some(r) = runner {
        // Lines in flight have finished with the drain; the runner records them and lets go
        // of its batch (an unfinished batch resumes on the next start or another replica).
        let _ = tokio::time::timeout(Duration::from_secs(10), r).await;
    }
    if let Some(t) = &state.tenancy {
        // Every finished request's usage row is stored before the process ends.
        t.close(std::time::Duration::from_secs(30)).await;
    }
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(ServeError::Io {
            what: "serving".into(),
            source,
        }),
        Err(e) => Err(ServeError::Config(format!("server task failed: {e}"))),
    }
}

/// Resolves on SIGTERM or ctrl-c.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
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
        _ = ctrl_c => {},
        _ = term => {},
    }
}
