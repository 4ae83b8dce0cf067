//! `rbee-node models …`: the catalog from the command line.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use rbee_proto::ModelRef;
use rbee_store::{ImportSource, ModelRecord, Store};
use serde_json::json;

use crate::output;
use rbee_node::preset::{self, Modelfile, Preset};

#[derive(Debug, Subcommand)]
pub enum ModelsCommand {
    /// Import a model: a GGUF file, a safetensors folder, `ollama:<name>[:tag]` or
    /// `hf-cache:<org/repo>[@rev][:file]`.
    Import {
        source: String,
        /// Catalog name (default: derived from the file or repo name).
        #[arg(long)]
        name: Option<String>,
    },
    /// Pull a model: through the running node, from the pool's peers that have it (any name,
    /// alias, content id or HuggingFace reference they know it by), else from HuggingFace:
    /// `org/repo` (GGUF chosen Q4_K_M > Q5_K_M > Q4_0 > Q5_0 > Q8_0 > smallest, or the
    /// safetensors model), `org/repo:file.gguf`, `org/repo@revision`. Without a running node,
    /// HuggingFace only. Ctrl-C cancels (the next pull resumes).
    Pull {
        model: String,
    },
    /// Search HuggingFace models, most downloaded first.
    Search {
        query: String,
        /// Only repos with GGUF files.
        #[arg(long)]
        gguf: bool,
        /// How many results (1-100).
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// List the models on this node.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Show one model: metadata, files, shards, source.
    Show {
        model: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a model and delete files no other model uses.
    Rm {
        model: String,
        /// Remove even if pinned.
        #[arg(long)]
        force: bool,
    },
    /// Re-hash models (all, or one) and report corrupt shards.
    Verify {
        model: Option<String>,
    },
    /// Give a model another name.
    Alias {
        model: String,
        alias: String,
    },
    /// Change a model's name.
    Rename {
        model: String,
        name: String,
    },
    /// Keep a model from being removed or evicted.
    Pin {
        model: String,
    },
    Unpin {
        model: String,
    },
    /// Delete unreferenced files and leftovers of interrupted imports.
    Gc,
    /// Make a preset from a Modelfile (FROM, SYSTEM, PARAMETER, MESSAGE, LICENSE): a model
    /// name, usable on every API, for a base model with these settings (no weights copied).
    Create {
        name: String,
        /// The Modelfile.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Write a model's GGUF and a Modelfile that `ollama create` accepts into DIR.
    Export {
        model: String,
        dir: PathBuf,
    },
}

pub fn open_store(data_dir: Option<PathBuf>) -> Result<Store> {
    let dir = match data_dir {
        Some(d) => d,
        None => rbee_store::default_data_dir()?,
    };
    Store::open(&dir).with_context(|| format!("opening the store at {}", dir.display()))
}

fn parse_ref(s: &str) -> Result<ModelRef> {
    Ok(s.parse::<ModelRef>()?)
}

/// Import and remove go through a running node (it reports progress as a job and unloads a
/// model before removing it); everything else reads the catalog directly, which is safe while a
/// node runs because every writer takes the catalog lock.
pub fn run(config: &rbee_node::NodeConfig, cmd: ModelsCommand) -> Result<()> {
    let node = crate::node::NodeClient::new(config);
    let node_up = node.health().is_some();
    // A preset is a file in the store, not a cataloged model: removed here, node or not.
    if let ModelsCommand::Rm { model, .. } = &cmd {
        let store = open_store(config.data_dir.clone())?;
        if find_preset(&store, model)?.is_some() {
            let name = model.strip_suffix(":latest").unwrap_or(model);
            store.remove_preset(name)?;
            println!("removed preset {name}");
            return Ok(());
        }
    }
    // An Ollama model's system prompt, parameters and messages become a preset under its
    // name, over its GGUF cataloged as `<name>-gguf`.
    let ollama = match &cmd {
        ModelsCommand::Import { source, name } => ollama_plan(
            &open_store(config.data_dir.clone())?,
            source,
            name.as_deref(),
        )?,
        _ => None,
    };
    let cmd = match (cmd, &ollama) {
        (ModelsCommand::Import { source, .. }, Some(plan)) => ModelsCommand::Import {
            source,
            name: Some(plan.gguf_name.clone()),
        },
        (cmd, _) => cmd,
    };
    let result = run_command(config, &node, node_up, cmd);
    if let (Ok(()), Some(plan)) = (&result, ollama) {
        keep_ollama_settings(&open_store(config.data_dir.clone())?, plan)?;
    }
    result
}

fn run_command(
    config: &rbee_node::NodeConfig,
    node: &crate::node::NodeClient,
    node_up: bool,
    cmd: ModelsCommand,
) -> Result<()> {
    match &cmd {
        ModelsCommand::Import { source, name } if node_up => {
            // The node resolves paths itself: hand it an absolute one.
            let source = match ImportSource::parse(source)? {
                ImportSource::Path(p) => std::path::absolute(&p)?.display().to_string(),
                _ => source.clone(),
            };
            let mut body = json!({"operation": "model_import", "source": source});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            let result = node.run_job(body, "importing")?;
            if result["already_present"].as_bool() == Some(true) {
                println!(
                    "already present: {}, nothing imported",
                    result["name"].as_str().unwrap_or("?")
                );
            } else {
                println!(
                    "imported {} ({}) through the running node, {}",
                    result["name"].as_str().unwrap_or("?"),
                    result["content_id"]
                        .as_str()
                        .unwrap_or("?")
                        .get(..12)
                        .unwrap_or("?"),
                    output::bytes(result["size"].as_u64().unwrap_or(0))
                );
            }
            return Ok(());
        }
        ModelsCommand::Pull { model } if node_up => {
            // The node client says when the node has taken the cancel.
            let cancel = ctrl_c_flag(false);
            let result = node.run_job_cancellable(
                json!({"operation": "model_pull", "model": model}),
                "pulling",
                Some(cancel),
            )?;
            print_pulled(&result, "through the running node");
            return Ok(());
        }
        ModelsCommand::Rm {
            model,
            force: false,
        } if node_up => {
            let result = node.run_job(
                json!({"operation": "model_remove", "model": model}),
                "removing",
            )?;
            println!(
                "removed {} through the running node",
                result["model"].as_str().unwrap_or("?")
            );
            return Ok(());
        }
        _ => {}
    }
    let store = open_store(config.data_dir.clone())?;
    match cmd {
        ModelsCommand::Import { source, name } => import(&store, &source, name.as_deref()),
        ModelsCommand::Pull { model } => pull(config, &store, &model),
        ModelsCommand::Search {
            query,
            gguf,
            limit,
            json,
        } => search(config, &query, gguf, limit, json),
        ModelsCommand::Ls { json } => ls(&store, json),
        ModelsCommand::Show { model, json } => {
            if let Some((name, preset)) = find_preset(&store, &model)? {
                if json {
                    println!("{}", serde_json::to_string_pretty(&preset)?);
                } else {
                    println!("# preset {name} over {}", preset.base_name);
                    print!("{}", preset.modelfile.render(&preset.base_name));
                }
                return Ok(());
            }
            let rec = store.resolve(&parse_ref(&model)?)?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&record_json(&store, &rec))?
                );
            } else {
                show(&store, &rec);
            }
            Ok(())
        }
        ModelsCommand::Create { name, file } => create(&store, &name, &file),
        ModelsCommand::Export { model, dir } => export(&store, &model, &dir),
        ModelsCommand::Rm { model, force } => {
            let (entry, gc) = store.remove(&parse_ref(&model)?, force)?;
            println!(
                "removed {} ({}), freed {}",
                entry.name,
                entry.content_id.short(),
                output::bytes(gc.freed_bytes)
            );
            kept_note(&gc);
            Ok(())
        }
        ModelsCommand::Verify { model } => verify(&store, model.as_deref()),
        ModelsCommand::Alias { model, alias } => {
            let rec = store.alias(&parse_ref(&model)?, &alias)?;
            println!("{} is now also `{alias}`", rec.entry.name);
            Ok(())
        }
        ModelsCommand::Rename { model, name } => {
            let rec = store.rename(&parse_ref(&model)?, &name)?;
            println!(
                "renamed {} to `{}`",
                rec.entry.content_id.short(),
                rec.entry.name
            );
            Ok(())
        }
        ModelsCommand::Pin { model } => pin(&store, &model, true),
        ModelsCommand::Unpin { model } => pin(&store, &model, false),
        ModelsCommand::Gc => {
            let r = store.gc()?;
            println!(
                "removed {} paths, freed {}",
                r.removed_paths,
                output::bytes(r.freed_bytes)
            );
            kept_note(&r);
            Ok(())
        }
    }
}

/// Says why gc left every blob in place, when it did.
fn kept_note(gc: &rbee_store::GcReport) {
    if !gc.kept_blobs_for.is_empty() {
        eprintln!(
            "warning: no blobs were deleted while these models are damaged: {} (`rbee-node models ls` says what is wrong; repair them by importing or pulling them again, or `rbee-node models rm` them)",
            gc.kept_blobs_for.join(", ")
        );
    }
}

/// True once Ctrl-C was pressed; a second Ctrl-C exits at once. The handler is registered
/// before this returns, so a Ctrl-C from then on is never the default "die at once".
fn ctrl_c_flag(announce: bool) -> Arc<AtomicBool> {
    ctrl_c(announce, || {})
}

/// [`ctrl_c_flag`], calling `on_cancel` at the first Ctrl-C (before it says so).
fn ctrl_c(announce: bool, on_cancel: impl Fn() + Send + 'static) -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return flag;
    };
    let registered = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    });
    let Ok(mut interrupts) = registered else {
        return flag;
    };
    let set = flag.clone();
    std::thread::spawn(move || {
        rt.block_on(async {
            if interrupts.recv().await.is_some() {
                set.store(true, Ordering::Relaxed);
                on_cancel();
                if announce {
                    eprintln!("cancelling (the partial download is kept; pull again to resume)");
                }
            }
            if interrupts.recv().await.is_some() {
                std::process::exit(130);
            }
        });
    });
    flag
}

fn hub(config: &rbee_node::NodeConfig) -> Result<rbee_hub::Hub> {
    let hc = config
        .hub_config()
        .context("no HuggingFace cache dir: set HF_HOME or pass --hf-home")?;
    Ok(rbee_hub::Hub::new(hc)?)
}

fn hf_ref(model: &str) -> Result<rbee_proto::HfRef> {
    match parse_ref(model)? {
        ModelRef::HuggingFace(hf) => Ok(hf),
        other => bail!(
            "`{other}` is not a HuggingFace reference: pull takes `org/repo`, `org/repo:file.gguf` or `org/repo@revision` (local files: `models import`)"
        ),
    }
}

fn print_pulled(result: &serde_json::Value, how: &str) {
    let name = result["name"].as_str().unwrap_or("?");
    let id = result["content_id"]
        .as_str()
        .unwrap_or("?")
        .get(..12)
        .unwrap_or("?");
    if result["already_present"].as_bool() == Some(true) {
        println!("already present: {name} ({id}), nothing pulled");
    } else {
        println!(
            "pulled {name} ({id}) from {} {how}: {}, {} downloaded",
            result["source"].as_str().unwrap_or("HuggingFace"),
            output::bytes(result["size"].as_u64().unwrap_or(0)),
            output::bytes(result["transferred"].as_u64().unwrap_or(0)),
        );
    }
}

fn pull(config: &rbee_node::NodeConfig, store: &Store, model: &str) -> Result<()> {
    hf_ref(model)?;
    let sources = rbee_node::pull::Sources {
        store: store.clone(),
        pool: None,
        hub: Some(hub(config)?),
    };
    let job = rbee_node::jobs::Jobs::default().create("model_pull");
    // Ctrl-C cancels the job at once: the hub download checks it between chunks.
    let cancelled = job.clone();
    ctrl_c(true, move || cancelled.cancel());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (bar, mut update) = output::progress_bar("pulling");
    // The node's own pull (`pull::get`: catalog, then the hub; no pool without a node), its
    // job's events drawn as the progress bar.
    let outcome = rt.block_on(async {
        let (_, mut events) = job.subscribe();
        let run = rbee_node::pull::get(&sources, model, rbee_node::pull::Reach::Anywhere, &job);
        tokio::pin!(run);
        loop {
            let event = async {
                match events.as_mut() {
                    Some(rx) => rx.recv().await.ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                result = &mut run => break result,
                Some(event) = event => match event {
                    rbee_node::jobs::JobEvent::Phase { phase } => bar.set_message(phase),
                    rbee_node::jobs::JobEvent::Progress { done, total, .. } => {
                        update(rbee_store::Progress { phase: "pulling", done, total })
                    }
                    _ => {}
                },
            }
        }
    });
    bar.finish_and_clear();
    let out = outcome?;
    print_pulled(
        &json!({
            "name": out.import.name,
            "content_id": out.import.content_id.to_hex(),
            "already_present": out.import.already_present,
            "size": out.import.manifest.total_size(),
            "transferred": out.transferred,
            "source": out.source,
        }),
        "in this process",
    );
    Ok(())
}

fn search(
    config: &rbee_node::NodeConfig,
    query: &str,
    gguf: bool,
    limit: usize,
    as_json: bool,
) -> Result<()> {
    let hits = hub(config)?.search(query, gguf, limit)?;
    if as_json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    if hits.is_empty() {
        println!("no models match `{query}`");
        return Ok(());
    }
    println!("{:<60} {:>10} {:>7}  GGUF", "ID", "DOWNLOADS", "LIKES");
    for h in hits {
        println!(
            "{:<60} {:>10} {:>7}  {}",
            h.id,
            output::count(h.downloads),
            h.likes,
            if h.gguf { "yes" } else { "no" }
        );
    }
    Ok(())
}

fn import(store: &Store, source: &str, name: Option<&str>) -> Result<()> {
    let src = ImportSource::parse(source)?;
    let started = std::time::Instant::now();
    let (bar, mut update) = output::progress_bar("importing");
    let outcome = store.import_named(&src, name, &mut update);
    bar.finish_and_clear();
    let outcome = outcome?;
    let final_name = outcome.name.clone();
    let size = outcome.manifest.total_size();
    if outcome.already_present {
        println!(
            "already present: {final_name} ({}), nothing imported",
            outcome.content_id.short()
        );
    } else {
        let secs = started.elapsed().as_secs_f64().max(1e-6);
        println!(
            "imported {final_name} ({}): {} {} {}, {} in {secs:.1}s ({}/s)",
            outcome.content_id.short(),
            outcome.manifest.metadata.architecture,
            outcome.manifest.metadata.quantization,
            output::count(outcome.manifest.metadata.parameter_count),
            output::bytes(size),
            output::bytes((size as f64 / secs) as u64)
        );
    }
    Ok(())
}

fn ls(store: &Store, json: bool) -> Result<()> {
    let rbee_store::Listing {
        models: records,
        damaged,
    } = store.listing()?;
    if json {
        let mut all: Vec<_> = records.iter().map(|r| record_json(store, r)).collect();
        all.extend(damaged.iter().map(|d| {
            json!({
                "name": d.entry.name,
                "aliases": d.entry.aliases,
                "content_id": d.entry.content_id.to_hex(),
                "damaged": d.reason,
                "pinned": d.entry.pinned,
                "added_at": d.entry.added_at,
                "last_used": d.entry.last_used,
            })
        }));
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for d in &damaged {
        eprintln!(
            "warning: model `{}` ({}) is damaged: {}; re-import or re-pull it to repair it, or `rbee-node models rm {}`",
            d.entry.name,
            d.entry.content_id.short(),
            d.reason,
            d.entry.name
        );
    }
    if records.is_empty() && damaged.is_empty() {
        println!("no models yet: `rbee-node models import <file.gguf>`");
        return Ok(());
    }
    println!(
        "{:<32} {:<12} {:<10} {:<8} {:>7} {:>10}  LAST USED",
        "NAME", "ID", "ARCH", "QUANT", "PARAMS", "SIZE"
    );
    for r in records {
        let m = &r.manifest.metadata;
        println!(
            "{:<32} {:<12} {:<10} {:<8} {:>7} {:>10}  {}{}",
            r.entry.name,
            r.entry.content_id.short(),
            m.architecture,
            m.quantization,
            output::count(m.parameter_count),
            output::bytes(r.manifest.total_size()),
            output::age(r.entry.last_used),
            if r.entry.pinned { " (pinned)" } else { "" }
        );
    }
    for (name, bytes) in store.presets()? {
        let base = serde_json::from_slice::<Preset>(&bytes)
            .map(|p| p.base_name)
            .unwrap_or_else(|_| "?".into());
        println!("{name:<32} {:<12} preset over {base}", "-");
    }
    for d in damaged {
        println!(
            "{:<32} {:<12} DAMAGED (see the warning above)",
            d.entry.name,
            d.entry.content_id.short()
        );
    }
    Ok(())
}

fn show(store: &Store, r: &ModelRecord) {
    let m = &r.manifest;
    println!("name:          {}", r.entry.name);
    if !r.entry.aliases.is_empty() {
        println!("aliases:       {}", r.entry.aliases.join(", "));
    }
    println!("content id:    {}", r.entry.content_id);
    println!("format:        {}", m.metadata.format.as_str());
    println!("architecture:  {}", m.metadata.architecture);
    println!("quantization:  {}", m.metadata.quantization);
    println!(
        "parameters:    {}",
        output::count(m.metadata.parameter_count)
    );
    println!("context:       {}", m.metadata.context_length);
    println!("size:          {}", output::bytes(m.total_size()));
    println!("source:        {}", source_text(&m.source));
    println!("pinned:        {}", r.entry.pinned);
    println!("last used:     {}", output::age(r.entry.last_used));
    if let Some(p) = store.primary_path(r) {
        println!("path:          {}", p.display());
    }
    println!("files:");
    for f in &m.files {
        println!(
            "  {}  {}  {} shards of {}",
            f.name,
            output::bytes(f.size),
            f.shards.len(),
            output::bytes(f.shard_size)
        );
    }
}

fn source_text(s: &rbee_proto::ModelSource) -> String {
    match s {
        rbee_proto::ModelSource::Local { name } => format!("local file {name}"),
        rbee_proto::ModelSource::HuggingFace {
            repo,
            revision,
            file,
        } => match file {
            Some(f) => format!("hf:{repo}@{revision}:{f}"),
            None => format!("hf:{repo}@{revision}"),
        },
        rbee_proto::ModelSource::Ollama { name } => format!("ollama:{name}"),
    }
}

fn record_json(store: &Store, r: &ModelRecord) -> serde_json::Value {
    let m = &r.manifest;
    json!({
        "name": r.entry.name,
        "aliases": r.entry.aliases,
        "content_id": r.entry.content_id.to_hex(),
        "format": m.metadata.format.as_str(),
        "architecture": m.metadata.architecture,
        "quantization": m.metadata.quantization,
        "parameter_count": m.metadata.parameter_count,
        "context_length": m.metadata.context_length,
        "size": m.total_size(),
        "source": source_text(&m.source),
        "pinned": r.entry.pinned,
        "added_at": r.entry.added_at,
        "last_used": r.entry.last_used,
        "path": store.primary_path(r),
        "files": m.files.iter().map(|f| json!({
            "name": f.name, "size": f.size, "shard_size": f.shard_size, "shards": f.shards.len(),
        })).collect::<Vec<_>>(),
    })
}

fn verify(store: &Store, model: Option<&str>) -> Result<()> {
    let r = model.map(parse_ref).transpose()?;
    let (bar, mut update) = output::progress_bar("verifying");
    let reports = store.verify(r.as_ref(), &mut update);
    bar.finish_and_clear();
    let reports = reports?;
    let mut bad = 0;
    for rep in &reports {
        if rep.is_ok() {
            println!("ok       {} ({})", rep.name, rep.content_id.short());
            continue;
        }
        bad += 1;
        if let Some(why) = &rep.damaged {
            println!("DAMAGED  {} ({}): {why}", rep.name, rep.content_id.short());
        }
        for f in &rep.missing_files {
            println!(
                "MISSING  {} ({}): file {f}",
                rep.name,
                rep.content_id.short()
            );
        }
        for (f, i) in &rep.bad_shards {
            println!(
                "CORRUPT  {} ({}): {f} shard {i}",
                rep.name,
                rep.content_id.short()
            );
        }
    }
    if bad > 0 {
        bail!("{bad} model(s) failed verification; remove and re-import or re-pull them");
    }
    Ok(())
}

fn pin(store: &Store, model: &str, pinned: bool) -> Result<()> {
    let rec = store.set_pinned(&parse_ref(model)?, pinned)?;
    println!(
        "{} {}",
        rec.entry.name,
        if pinned { "pinned" } else { "unpinned" }
    );
    Ok(())
}

/// The preset `name` (`:latest` dropped) names, if the store holds one.
fn find_preset(store: &Store, name: &str) -> Result<Option<(String, Preset)>> {
    let name = name.strip_suffix(":latest").unwrap_or(name);
    for (n, bytes) in store.presets()? {
        if n == name {
            let p = serde_json::from_slice(&bytes)
                .with_context(|| format!("preset `{n}` does not parse"))?;
            return Ok(Some((n, p)));
        }
    }
    Ok(None)
}

/// `models create NAME -f Modelfile`: FROM a preset (its settings, then these), a cataloged
/// model, or a GGUF path (imported first, relative to the Modelfile's folder).
fn create(store: &Store, name: &str, file: &std::path::Path) -> Result<()> {
    let size = std::fs::metadata(file)
        .with_context(|| format!("reading {}", file.display()))?
        .len();
    if size > preset::MAX_MODELFILE_BYTES as u64 {
        bail!(
            "{} is {size} bytes; a Modelfile is at most {}",
            file.display(),
            preset::MAX_MODELFILE_BYTES
        );
    }
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mf: Modelfile = preset::parse(&text).with_context(|| file.display().to_string())?;
    preset::check_parameters(&mf.parameters)?;
    let name = name.strip_suffix(":latest").unwrap_or(name);
    if !rbee_proto::is_valid_name(name) {
        bail!("`{name}` is not a valid name (letters, digits, `.`, `-`, `_`, `:`)");
    }
    if store
        .resolve_entry(&ModelRef::Name(name.to_string()))
        .is_ok()
    {
        bail!("`{name}` already names a model in the catalog; choose another name for the preset");
    }
    let preset = if let Some((_, parent)) = find_preset(store, &mf.from)? {
        parent.derive(mf)
    } else {
        let from = mf.from.strip_suffix(":latest").unwrap_or(&mf.from);
        let record = match parse_ref(from)? {
            ModelRef::LocalPath(p) => {
                let path = file
                    .parent()
                    .map_or_else(|| PathBuf::from(&p), |dir| dir.join(&p));
                let outcome = store.import_named(
                    &ImportSource::Path(path.clone()),
                    None,
                    &mut |_| {},
                )?;
                println!("imported {} from {}", outcome.name, path.display());
                store.resolve(&ModelRef::ContentId(outcome.content_id))?
            }
            r => store.resolve(&r).with_context(|| {
                format!("FROM {}: not in the catalog (`rbee-node models ls`; `models pull` fetches one)", mf.from)
            })?,
        };
        Preset {
            base: record.entry.content_id.to_hex(),
            base_name: record.entry.name.clone(),
            modelfile: mf,
        }
    };
    store.save_preset(name, &serde_json::to_vec_pretty(&preset)?)?;
    println!("created preset {name} over {}", preset.base_name);
    Ok(())
}

/// `models export MODEL DIR`: the GGUF (hard-linked when DIR is on the same file system,
/// else copied) and a Modelfile whose FROM is that file, which `ollama create -f` accepts.
fn export(store: &Store, model: &str, dir: &std::path::Path) -> Result<()> {
    let found = find_preset(store, model)?;
    let record = match &found {
        Some((_, p)) => store.resolve(&ModelRef::ContentId(p.base.parse()?))?,
        None => store.resolve(&parse_ref(model)?)?,
    };
    let Some(path) = store.primary_path(&record) else {
        bail!("model {} has no model file", record.entry.name);
    };
    if path.extension().is_none_or(|e| e != "gguf") {
        bail!(
            "model {} is a {} folder; Ollama imports GGUF files: export a GGUF model",
            record.entry.name,
            record.manifest.metadata.format.as_str()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let gguf_name = format!("{}.gguf", record.entry.name.replace(':', "-"));
    let gguf = dir.join(&gguf_name);
    if !gguf.exists() && std::fs::hard_link(&path, &gguf).is_err() {
        let tmp = dir.join(format!(".{gguf_name}.partial"));
        std::fs::copy(&path, &tmp).with_context(|| format!("copying to {}", tmp.display()))?;
        std::fs::rename(&tmp, &gguf)?;
    }
    let modelfile = match &found {
        Some((_, p)) => p.modelfile.render(&format!("./{gguf_name}")),
        None => Modelfile::default().render(&format!("./{gguf_name}")),
    };
    let out = dir.join("Modelfile");
    let tmp = dir.join(".Modelfile.partial");
    std::fs::write(&tmp, modelfile)?;
    std::fs::rename(&tmp, &out)?;
    println!(
        "wrote {} and {} (`ollama create <name> -f {}`)",
        gguf.display(),
        out.display(),
        out.display()
    );
    Ok(())
}

/// An `ollama:` import whose model has settings besides its GGUF.
struct OllamaPlan {
    preset_name: String,
    gguf_name: String,
    settings: rbee_store::OllamaSettings,
}

/// For `ollama:<name>`: its settings and the names to use, when it has settings.
fn ollama_plan(store: &Store, source: &str, name: Option<&str>) -> Result<Option<OllamaPlan>> {
    let ImportSource::Ollama(ollama_name) = ImportSource::parse(source)? else {
        return Ok(None);
    };
    let settings = store.ollama_settings(&ollama_name)?;
    if settings.is_empty() {
        return Ok(None);
    }
    let preset_name = match name {
        Some(n) => n.to_string(),
        None => ollama_name
            .strip_suffix(":latest")
            .unwrap_or(&ollama_name)
            .replace('/', "-"),
    };
    Ok(Some(OllamaPlan {
        gguf_name: format!("{preset_name}-gguf"),
        preset_name,
        settings,
    }))
}

/// Stores an imported Ollama model's settings as a preset over its GGUF: its system prompt,
/// parameters, messages, license and Go template (rendered in place of the GGUF's own chat
/// template). Parameters rbee does not implement, and a template using what rbee's Go
/// template renderer does not support, are left out, each named.
fn keep_ollama_settings(store: &Store, plan: OllamaPlan) -> Result<()> {
    let base = store.resolve(&ModelRef::Name(plan.gguf_name.clone()))?;
    let mut mf = Modelfile {
        from: plan.gguf_name.clone(),
        system: plan.settings.system.clone(),
        license: plan.settings.license.clone(),
        ..Modelfile::default()
    };
    for (key, value) in &plan.settings.params {
        let mut one = serde_json::Map::new();
        preset::add_parameter(&mut one, key, value.clone());
        match preset::check_parameters(&one) {
            Ok(()) => preset::add_parameter(&mut mf.parameters, key, value.clone()),
            Err(e) => eprintln!("note: parameter `{key}` left out of the preset: {e}"),
        }
    }
    for (role, content) in &plan.settings.messages {
        if matches!(role.as_str(), "system" | "user" | "assistant") {
            mf.messages.push(preset::PresetMessage {
                role: role.clone(),
                content: content.clone(),
            });
        }
    }
    if let Some(template) = &plan.settings.template {
        match preset::check_template(template) {
            Ok(()) => mf.template = Some(template.clone()),
            Err(e) => eprintln!(
                "note: the Ollama template is not kept ({e}); the GGUF's own chat template applies"
            ),
        }
    }
    if store
        .resolve_entry(&ModelRef::Name(plan.preset_name.clone()))
        .is_ok()
    {
        eprintln!(
            "note: `{}` already names a model, so its settings were not kept as a preset; import it again with `--name <other>` to keep them",
            plan.preset_name
        );
        return Ok(());
    }
    let p = Preset {
        base: base.entry.content_id.to_hex(),
        base_name: base.entry.name.clone(),
        modelfile: mf,
    };
    store.save_preset(&plan.preset_name, &serde_json::to_vec_pretty(&p)?)?;
    println!(
        "kept its system prompt, parameters and template as preset {} over {} (`rbee-node models show {}`)",
        plan.preset_name, plan.gguf_name, plan.preset_name
    );
    Ok(())
}
