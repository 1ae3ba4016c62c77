"""The ``cxrgen`` command: each sub-command parses its arguments, then calls one library function."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cxrgen.errors import CxrgenError


def _write_json(obj: dict, path: str | None) -> None:
    """Write ``obj`` as JSON to ``path`` (creating folders), or print it when no path is given."""
    text = json.dumps(obj, indent=2, sort_keys=False)
    if path is None:
        print(text)
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {out}")


def _add_overrides(p: argparse.ArgumentParser, example: str) -> None:
    """The ``--set KEY=VALUE`` option every config-driven sub-command has."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a config field, e.g. --set {example}")


def _config_command(sub: argparse._SubParsersAction, name: str, help: str, config_help: str, example: str,
                    out_help: str = "output folder (default: the config's out_dir)") -> argparse.ArgumentParser:
    """A sub-command that runs one YAML config: ``NAME CONFIG [--set KEY=VALUE] [--out DIR]``."""
    p = sub.add_parser(name, help=help)
    p.add_argument("config", help=config_help)
    _add_overrides(p, example)
    p.add_argument("--out", help=out_help)
    return p


# --- prepare ----------------------------------------------------------------------------------
def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prepare", help="read a collection into a manifest (parquet or CSV)")
    p.add_argument("source", help="mimic | csv | covid | pediatric | iu | twin")
    p.add_argument("path", help="root folder (or file) of the collection")
    p.add_argument("--out", required=True, help="output folder for manifest, summary and config")
    p.add_argument("--config", help="YAML DataConfig (prompt, image, split)")
    _add_overrides(p, "prompt.section=findings")
    p.add_argument("--column", dest="columns", action="append", default=[], metavar="FIELD=COLUMN",
                   help="generic CSV only: which CSV column holds a manifest field, e.g. image_path=file")
    p.add_argument("--format", choices=("parquet", "csv"), default="parquet")
    p.set_defaults(func=_cmd_prepare)


def _cmd_prepare(args: argparse.Namespace) -> int:
    from cxrgen.config import DataConfig, load_config
    from cxrgen.data.prepare import prepare

    cfg = load_config(DataConfig, args.config, args.overrides)
    columns = dict(_split_pair(c, "--column") for c in args.columns)
    summary = prepare(args.source, args.path, args.out, cfg, fmt=args.format, columns=columns)
    print(summary.format())
    return 0


def _split_pair(item: str, flag: str) -> tuple[str, str]:
    if "=" not in item:
        raise CxrgenError(f"{flag} {item!r}: write it as NAME=VALUE")
    key, value = item.split("=", 1)
    return key.strip(), value.strip()


# --- label ------------------------------------------------------------------------------------
def _add_label(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("label", help="label report text with the 14 CheXpert observations")
    p.add_argument("text", nargs="?", help="report text to label (prints JSON)")
    p.add_argument("--check-iu", metavar="ARCHIVE",
                   help="score the labeler against the MeSH terms of the IU X-ray report archive")
    p.add_argument("--json", dest="json_out", help="write the JSON here instead of printing it")
    p.set_defaults(func=_cmd_label)


def _cmd_label(args: argparse.Namespace) -> int:
    if args.check_iu:
        from cxrgen.data.labeler_check import check_labeler_on_iu

        result = check_labeler_on_iu(args.check_iu)
        _write_json(result, args.json_out)
        print(f"macro_f1 = {result['macro_f1']:.3f}")
        return 0
    from cxrgen.data.labeler import label_report
    from cxrgen.data.language import check_english

    _write_json(label_report(check_english(args.text or "")).to_dict(), args.json_out)
    return 0


# --- info -------------------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="parameters of each part and denoiser GFLOPs per forward")
    p.add_argument("model", help="a model YAML config (e.g. src/cxrgen/configs/uvit-s2-256.yaml) or a model folder")
    _add_overrides(p, "denoiser.name=uvit-m")
    p.add_argument("--json", dest="json_out", help="write the JSON here instead of printing it")
    p.set_defaults(func=_cmd_info)


def _cmd_info(args: argparse.Namespace) -> int:
    from cxrgen.parts import describe, describe_parts

    if Path(args.model).is_dir():
        from cxrgen.pipeline import CXRPipeline

        info = describe_parts(CXRPipeline.from_pretrained(args.model).parts())
    else:
        info = describe(args.model, args.overrides)
    _write_json(info, args.json_out)
    return 0


# --- tokenizer --------------------------------------------------------------------------------
def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tokenizer", help="learn a BPE tokenizer for the scratch text encoder from manifests' text")
    p.add_argument("manifests", nargs="+", help="manifests from `cxrgen prepare` (reports and prompts)")
    p.add_argument("--out", required=True, help="folder for the tokenizer files (text.name_or_path of a scratch encoder)")
    p.add_argument("--vocab-size", type=int, default=4000)
    p.add_argument("--min-frequency", type=int, default=2)
    p.add_argument("--column", dest="columns", action="append", default=[],
                   help="text column to learn from (repeatable; default: prompt and report)")
    p.set_defaults(func=_cmd_tokenizer)


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from cxrgen.text import manifest_texts, train_tokenizer

    texts = manifest_texts(args.manifests, args.columns or ("prompt", "report"))
    tok = train_tokenizer(texts, args.vocab_size, args.out, args.min_frequency)
    print(f"learned {len(tok)} tokens from {len(texts)} texts; wrote {args.out}")
    return 0


# --- train-autoencoder ------------------------------------------------------------------------
def _add_train_autoencoder(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train-autoencoder", "train the 1-channel CXR latent autoencoder",
                        "YAML AutoencoderTrainConfig (e.g. src/cxrgen/configs/autoencoder-tiny.yaml)", "steps=1000")
    p.set_defaults(func=_cmd_train_autoencoder)


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from cxrgen.train.autoencoder import run_train_autoencoder

    metrics = run_train_autoencoder(args.config, args.overrides, args.out)
    print(json.dumps(metrics["eval"], indent=2))
    return 0


# --- phantom ----------------------------------------------------------------------------------
def _add_phantom(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("phantom", help="write procedural CXR phantoms with known findings and reports")
    p.add_argument("--n", type=int, default=2000, help="number of phantoms")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (images/ and phantoms.csv)")
    p.set_defaults(func=_cmd_phantom)


def _cmd_phantom(args: argparse.Namespace) -> int:
    from cxrgen.phantom import write_phantom_set

    table = write_phantom_set(args.n, args.size, args.out, seed=args.seed)
    print(f"wrote {args.n} phantoms and {table}")
    return 0


# --- train-multiview (CoDi XR stages) ---------------------------------------------------------
def _add_train_multiview(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train-multiview", "train one CoDi XR stage (report_ae | aligned | joint)",
                        "YAML MultiviewTrainConfig (stage: report_ae | aligned | joint)", "report_ae.steps=500")
    p.set_defaults(func=_cmd_train_multiview)


def _cmd_train_multiview(args: argparse.Namespace) -> int:
    from cxrgen.train.multiview import run_train_multiview

    metrics = run_train_multiview(args.config, args.overrides, args.out)
    if metrics.get("stage") == "report_ae":
        from cxrgen.evaluate.report_ae import add_truth_scores, wants_truth_scores

        run_dir = Path(metrics["model"]).parent
        if wants_truth_scores(run_dir):  # report_ae.eval_truth on twin reports: scores against the cases' truth
            add_truth_scores(run_dir)
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    print(json.dumps({k: v for k, v in metrics.items() if k != "loss_history"}, indent=2, default=str))
    return 0


# --- twin (CT-based frontal + lateral twin) ----------------------------------------------------
def _add_twin(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("twin", help="write CT-twin cases: PA + lateral DRRs of one chest CT with findings, reports")
    p.add_argument("--n", type=int, default=1000, help="number of cases (studies)")
    p.add_argument("--size", type=int, default=128, help="image side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="output folder (images/, reports/, twin.csv)")
    p.add_argument("--iu-reports", help="IU report archive NLMCXR_reports.tgz: real sentences in the reports")
    p.add_argument("--validate-wording", choices=("train", "dev"), default="train",
                   help="the validate split's report wordings: train, or dev (a third set, unseen in training and "
                        "test: choose between models on unseen wordings without the test split)")
    p.add_argument("--threads", type=int, default=1, help="torch threads while rendering (1 was fastest)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_twin)


def _cmd_twin(args: argparse.Namespace) -> int:
    from cxrgen.twin import write_twin_set

    table = write_twin_set(args.n, args.size, args.out, seed=args.seed, iu_archive=args.iu_reports,
                           progress=not args.no_progress, threads=args.threads,
                           validate_wording=args.validate_wording)
    print(f"wrote {args.n} twin cases and {table}; read it with `cxrgen prepare twin {args.out} --out DIR`")
    return 0


# --- cache ------------------------------------------------------------------------------------
def _add_cache(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "cache", "precompute latents (+ frozen text embeddings) of a training config's rows",
                        "YAML TrainConfig (manifests, split, image, model; cache.* for storage)",
                        "cache.dtype=float16", out_help="cache folder (default: the config's cache_dir)")
    p.set_defaults(func=_cmd_cache)


def _cmd_cache(args: argparse.Namespace) -> int:
    from cxrgen.cache import run_cache

    summary = run_cache(args.config, args.overrides, args.out)
    print(f"cache {summary['cache_dir']}: {summary['rows']} rows in {summary['shards']} shard(s), "
          f"{summary['dtype']}, text embeddings: {summary['text_embeddings']}, {summary['bytes'] / 2**20:.1f} MiB")
    return 0


# --- train ------------------------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train", "train the diffusion model (accelerate: `accelerate launch -m cxrgen.cli train`)",
                        "YAML TrainConfig (e.g. src/cxrgen/configs/train-tiny.yaml)", "steps=2000")
    p.add_argument("--resume", help="'latest' (newest checkpoint under the output folder) or a checkpoint folder")
    p.add_argument("--overwrite", action="store_true",
                   help="delete a previous run in the output folder and start afresh (default: refuse)")
    p.set_defaults(func=_cmd_train)


def _cmd_train(args: argparse.Namespace) -> int:
    from cxrgen.train.trainer import run_train

    summary = run_train(args.config, args.overrides, args.resume, args.out, overwrite=args.overwrite)
    if summary["rank"] == 0:  # one report under `accelerate launch`
        print(json.dumps({k: v for k, v in summary.items() if k != "history"}, indent=2))
    return 0


# --- sampling overrides (generate, control, evaluate) ------------------------------------------
def _add_sampling_args(p: argparse.ArgumentParser, seed_help: str) -> None:
    """--steps, --guidance-scale (alias --guidance), --sampler and --seed; unset keeps the model's defaults."""
    p.add_argument("--steps", type=int, help="sampling steps (default: the model's sampling settings)")
    p.add_argument("--guidance-scale", "--guidance", dest="guidance_scale", type=float,
                   help="classifier-free guidance scale (1 = none; default: the model's)")
    p.add_argument("--sampler", help="ddpm | ddim | pndm | dpm++ | euler; a flow model: flow-euler | flow-heun | flow-dpm++ (default: the model's)")
    p.add_argument("--seed", type=int, help=seed_help)


# --- generate ---------------------------------------------------------------------------------
def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate synthetic chest X-rays (PNG or DICOM) from report text")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="report text(s) (or use --prompts FILE.csv)")
    p.add_argument("--prompts", dest="prompts_file", help="CSV with a 'prompt' column: batch mode")
    _add_sampling_args(p, seed_help="seed of the first image; image g gets seed + g")
    p.add_argument("-n", type=int, help="images per prompt (default: the model's sampling settings)")
    p.add_argument("--negative-prompt", help="replaces the null prompt of guidance")
    p.add_argument("--model", help="model directory or hub id (default: the packaged model; with --views / --to / "
                   "--frontal / --lateral: the packaged any-to-any model twin-codi)")
    p.add_argument("--out", required=True, help="output folder (existing images are kept and skipped)")
    p.add_argument("--dicom", action="store_true", help="write DICOM Secondary Capture instead of PNG")
    p.add_argument("--batch-size", type=int, help="images of one prompt sampled together (default 4)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--filter", action="store_true", help="quality filter: draw again (new seed) images whose "
                   "cxrgen-evaluator labels contradict the prompt (docs/quality_filter.md)")
    p.add_argument("--filter-threshold", type=float, help="a fixed threshold T instead of the evaluator's calibrated "
                   "operating points (cxrgen calibrate-filter): present needs p >= T, negated p <= 1 - T")
    p.add_argument("--filter-max-tries", type=int, default=4, help="draws per image at most (default 4)")
    p.add_argument("--filter-evaluator", help="cxrgen-evaluator folder for the filter (default: the shipped one)")
    p.add_argument("--views", "--to", dest="to", help="any-to-any (MultiViewPipeline --model): what to generate, "
                   "e.g. frontal,lateral or lateral,report")
    p.add_argument("--frontal", help="any-to-any: a given frontal view image")
    p.add_argument("--lateral", help="any-to-any: a given lateral view image")
    p.set_defaults(func=_cmd_generate)


def _cmd_generate(args: argparse.Namespace) -> int:
    if args.to or args.frontal or args.lateral:
        from cxrgen.generate_multiview import run_generate_multiview

        paths = run_generate_multiview(args.prompts, args.out, args.model, to=args.to, frontal=args.frontal,
                                       lateral=args.lateral, n=args.n or 1, steps=args.steps,
                                       guidance_scale=args.guidance_scale, sampler=args.sampler, seed=args.seed,
                                       device="cpu" if args.device == "auto" else args.device,
                                       progress=not args.no_progress, fmt="dicom" if args.dicom else "png")
        print(f"{len(paths)} file(s) in {Path(args.out).resolve()}")
        return 0
    from cxrgen.generate import run_generate

    kwargs = dict(model=args.model, prompts_file=args.prompts_file, n=args.n, steps=args.steps,
                  guidance_scale=args.guidance_scale, sampler=args.sampler, seed=args.seed,
                  negative_prompt=args.negative_prompt, fmt="dicom" if args.dicom else "png",
                  batch_size=args.batch_size, device=args.device, progress=not args.no_progress)
    if args.filter:
        from cxrgen.evaluate.quality_filter import run_generate_filtered

        paths = run_generate_filtered(args.prompts, args.out, evaluator=args.filter_evaluator,
                                      threshold=args.filter_threshold, max_tries=args.filter_max_tries, **kwargs)
    else:
        paths = run_generate(args.prompts, args.out, **kwargs)
    print(f"{len(paths)} image(s) in {Path(args.out).resolve()}")
    if paths.filter_summary is not None:
        s = paths.filter_summary
        rate = "n/a" if s["acceptance_rate"] is None else f"{s['acceptance_rate']:.3f}"
        print(f"quality filter: acceptance rate {rate} ({s['accepted']} accepted of {s['draws']} draws; "
              f"{s['not_accepted']} image(s) kept without passing, marked filter_accepted=false)")
    return 0


# --- control ----------------------------------------------------------------------------------
def _add_control(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("control", help="controllability benchmark: generate phantom prompts, measure the findings")
    p.add_argument("--model", required=True, help="model directory (CXRPipeline) trained on phantoms")
    p.add_argument("--json", required=True, help="output JSON (scores, per-prompt measurements, settings)")
    p.add_argument("--n-per-prompt", type=int, default=2, help="images per benchmark prompt")
    _add_sampling_args(p, seed_help="seed of the benchmark's noise (default 0)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--wording", choices=("heldout", "train"), default="heldout",
                   help="heldout: the benchmark (wordings unseen in training); train: the training wordings, "
                        "to tell a model that ignores the text from one that does not generalise the wording")
    p.add_argument("--findings", nargs="+", metavar="FINDING",
                   help="keep the prompts whose findings are all among these (effusion pneumothorax consolidation "
                        "cardiomegaly): for a model trained on fewer kinds; default all")
    p.set_defaults(func=_cmd_control)


def _cmd_control(args: argparse.Namespace) -> int:
    import math

    from cxrgen.phantom.control import CONTROL_KEYS, run_control
    from cxrgen.phantom.findings import FINDINGS

    result = run_control(args.model, n_per_prompt=args.n_per_prompt, steps=args.steps,
                         guidance_scale=args.guidance_scale, sampler=args.sampler,
                         seed=0 if args.seed is None else args.seed, device=args.device, wording=args.wording,
                         findings=tuple(args.findings) if args.findings else FINDINGS)
    result.update({k: None for k in CONTROL_KEYS if isinstance(result[k], float) and math.isnan(result[k])})
    by = result["laterality_by_finding"]
    by.update({k: None for k, v in by.items() if math.isnan(v)})  # NaN is not JSON
    _write_json(result, args.json)
    print(json.dumps({k: result[k] for k in CONTROL_KEYS}))
    return 0


# --- train-evaluator --------------------------------------------------------------------------
def _add_train_evaluator(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train-evaluator", "train the cxrgen-evaluator CXR classifier (FID_cxr, AUROC)",
                        "YAML EvaluatorTrainConfig (e.g. src/cxrgen/configs/evaluator-small.yaml)", "epochs=5")
    p.set_defaults(func=_cmd_train_evaluator)


def _cmd_train_evaluator(args: argparse.Namespace) -> int:
    from cxrgen.evaluate.train_evaluator import run_train_evaluator

    metrics = run_train_evaluator(args.config, args.overrides, args.out)
    print(json.dumps(metrics.get("test", metrics), indent=2, default=str))
    return 0


# --- train-reid -------------------------------------------------------------------------------
def _add_train_reid(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train-reid", "train the patient re-identification network (privacy metric)",
                        "YAML ReidTrainConfig (e.g. src/cxrgen/configs/reid-small.yaml)", "epochs=15")
    p.set_defaults(func=_cmd_train_reid)


def _cmd_train_reid(args: argparse.Namespace) -> int:
    from cxrgen.evaluate.train_reid import run_train_reid

    metrics = run_train_reid(args.config, args.overrides, args.out)
    print(json.dumps(metrics.get("heldout"), indent=2, default=str))
    return 0


def _add_train_evaluator_ssl(sub: argparse._SubParsersAction) -> None:
    p = _config_command(sub, "train-evaluator-ssl", "train the 224 px cxrgen-evaluator with SimCLR + labels",
                        "YAML SSLEvaluatorTrainConfig (e.g. src/cxrgen/configs/evaluator-ssl224.yaml)",
                        "base.epochs=8")
    p.set_defaults(func=_cmd_train_evaluator_ssl)


def _cmd_train_evaluator_ssl(args: argparse.Namespace) -> int:
    from cxrgen.evaluate.train_ssl import run_train_ssl_evaluator

    metrics = run_train_ssl_evaluator(args.config, args.overrides, args.out)
    print(json.dumps(metrics.get("test", metrics), indent=2, default=str))
    return 0


def _add_calibrate_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("calibrate-filter", help="per-class operating points of the quality filter, chosen on the "
                       "evaluator's real held-out images (docs/quality_filter.md)")
    p.add_argument("evaluator", nargs="?", help="cxrgen-evaluator folder (default: the shipped one)")
    p.add_argument("--data", nargs="+", required=True, metavar="MANIFEST", help="the manifests it was trained on")
    p.add_argument("--split", default="validate", help="held-out split to calibrate on (default validate)")
    p.add_argument("--method", default="youden", choices=("youden", "specificity"), help="Youden's J (default) "
                   "or the most sensitive cut point reaching --target-specificity")
    p.add_argument("--target-specificity", type=float, default=0.9, help="with --method specificity (default 0.9)")
    p.add_argument("--test-split", default="test", help="measure own vs swapped prompt acceptance there ('' skips)")
    p.add_argument("--dry-run", action="store_true", help="print, do not write filter_operating_points.json")
    p.set_defaults(func=_cmd_calibrate_filter)


def _cmd_calibrate_filter(args: argparse.Namespace) -> int:
    from cxrgen.evaluate.filter_calibration import calibrate_filter

    result = calibrate_filter(args.data, args.evaluator, split=args.split, method=args.method,
                              target_specificity=args.target_specificity, test_split=args.test_split or None,
                              write=not args.dry_run, progress=False)
    print(json.dumps(result, indent=2))
    return 0


# --- evaluate ---------------------------------------------------------------------------------
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="generate K images per prompt, then FID/KID, MS-SSIM, AUROC, memorization")
    p.add_argument("--model", help="model directory or hub id (default: the packaged model)")
    p.add_argument("--prompts", required=True, help="CSV with a 'prompt' column (optional image_path, label columns)")
    p.add_argument("--real", required=True, help="manifest of the real reference images")
    p.add_argument("--out", required=True, help="output folder: generated/ (reused), report.md, grids, plots")
    p.add_argument("--json", dest="json_out", help="metrics JSON path (default: OUT/metrics.json)")
    p.add_argument("--extractor", dest="extractors", action="append", metavar="NAME",
                   help="FID feature space, repeatable: cxrgen-evaluator (default), inception-v3, xrv-densenet, clip-image, rad-dino")
    p.add_argument("--extractor-weights", action="append", default=[], metavar="NAME=WEIGHTS",
                   help="weights of an extractor other than cxrgen-evaluator, e.g. inception-v3=pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--evaluator", help="cxrgen-evaluator folder (default: the shipped one)")
    p.add_argument("--train-manifest", help="the model's training manifest, for memorization (default: the one "
                   "named by the model's train_config.yaml; evaluation stops when neither is there)")
    p.add_argument("--reid-model", help="re-identification network folder from `cxrgen train-reid` (privacy; "
                   "default: the shipped one)")
    p.add_argument("--n-per-prompt", type=int, default=4, help="images per prompt (RoentGen: 4)")
    _add_sampling_args(p, seed_help="seed of the first image; image g gets seed + g")
    p.add_argument("--batch-size", type=int, default=4, help="images sampled together (throughput is at this size)")
    p.add_argument("--max-real", type=int, help="random subset of the real reference rows")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from cxrgen.config import EvalConfig
    from cxrgen.evaluate.run import RESULT_KEYS, run_evaluation

    cfg = EvalConfig(model=args.model, prompts=args.prompts, real_manifest=args.real, out_dir=args.out,
                     json_path=args.json_out, extractors=tuple(args.extractors or ("cxrgen-evaluator",)),
                     extractor_weights=tuple(args.extractor_weights), evaluator=args.evaluator,
                     train_manifest=args.train_manifest, reid_model=args.reid_model, n_per_prompt=args.n_per_prompt, steps=args.steps,
                     sampler=args.sampler, guidance_scale=args.guidance_scale, seed=args.seed, batch_size=args.batch_size,
                     max_real=args.max_real, device=args.device, progress=not args.no_progress)
    result = run_evaluation(cfg)
    print(json.dumps({k: result[k] for k in RESULT_KEYS if k != "compute"}, indent=2))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# --- evaluate-multiview -----------------------------------------------------------------------
def _add_evaluate_multiview(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate-multiview", help="any-to-any model on held-out twin cases: the marks, the "
                       "deliberate mistakes, JSON + report with grids")
    p.add_argument("model", metavar="MODEL", help="multi-view model folder (`cxrgen train-multiview`)")
    p.add_argument("--twin", required=True, help="twin folder (`cxrgen twin`) holding the split")
    p.add_argument("--out", default="out/evaluate-multiview", help="folder for report.md and grid.png")
    p.add_argument("--json", dest="json_out", help="scores JSON (default: OUT/metrics.json)")
    p.add_argument("--n", type=int, default=60, help="held-out cases (default 60)")
    p.add_argument("--split", default="test", help="twin split: test (held-out cases and wordings) | validate | train")
    _add_sampling_args(p, seed_help="seed of the sampling noise (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="cases sampled together")
    p.add_argument("--aligned", help="aligned encoders folder: adds the retrieval baseline of frontal -> report")
    p.add_argument("--adult", metavar="ROOT", help="the adult set's folder (covid-cxr-256): adds real_data, FID_cxr / "
                   "realism per view and frontal -> report on held-out adult notes")
    p.add_argument("--adult-n", type=int, default=100, help="with --adult: at most this many generated images per "
                   "view and held-out notes (default 100)")
    p.add_argument("--evaluator", help="with --adult: evaluator folder for FID_cxr (default: the shipped one)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_evaluate_multiview)


def _cmd_evaluate_multiview(args: argparse.Namespace) -> int:
    from cxrgen.evaluate.multiview import evaluate_multiview

    result = evaluate_multiview(args.model, args.twin, args.out, json_path=args.json_out, n=args.n, split=args.split,
                                steps=args.steps, sampler=args.sampler, guidance_scale=args.guidance_scale,
                                batch=args.batch_size, seed=args.seed or 0, aligned=args.aligned,
                                progress=not args.no_progress, adult=args.adult, adult_n=args.adult_n,
                                evaluator=args.evaluator)
    for key, m in result["marks"].items():
        value = "-" if m["value"] is None else f"{m['value']:.3f}"
        print(f"{key}: {value} (mark >= {m['mark']}: {'pass' if m['passed'] else 'fail'})")
    for key, c in result["mistake_checks"].items():
        print(f"mistake {key}: {c['value']:.3f} ({'fails' if c['fails_mark'] else 'PASSES'} {c['scored_as']})")
    for view in ("frontal", "lateral") if "real_data" in result else ():
        rows = result["real_data"][view]["rows"]
        print(f"adult {view} FID_cxr: " + ", ".join(f"{k} {r['fid']:.1f}" for k, r in rows.items()
                                                    if r["fid"] is not None))
    print(f"report: {Path(args.out) / 'report.md'}")
    return 0


# --- augment-study ----------------------------------------------------------------------------
def _csv_list(text: str) -> tuple[str, ...]:
    return tuple(x.strip() for x in text.split(",") if x.strip())


def _add_augment_study(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("augment-study", help="classifier AUROC on real test images when trained on real, "
                       "synthetic, real + synthetic, synthetic-then-real images (matched sizes, seeds, bootstrap CIs)")
    p.add_argument("manifest", nargs="?", help="real manifest from `cxrgen prepare` (image_path, split, patient_id, "
                   "labels); optional with a --config that names it")
    p.add_argument("--config", help="YAML AugmentStudyConfig (e.g. src/cxrgen/configs/augment-twin.yaml); "
                   "options given on the command line override it")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set n_real=300")
    p.add_argument("--out", help="output folder: augment_study.json, .md and .png (default: runs/augment-study)")
    p.add_argument("--label-column", help="multi-class label column (default: finding)")
    p.add_argument("--label-columns", type=_csv_list, help="multi-label: comma-separated CheXpert columns (1/0)")
    p.add_argument("--classes", type=_csv_list, help="multi-class values to keep (default: all)")
    p.add_argument("--view", help="keep only rows of this view (e.g. PA)")
    p.add_argument("--model", help="generative model folder or hub id (default: the packaged model)")
    p.add_argument("--synthetic-csv", help="instead of a model: CSV of synthetic images (image_path + labels)")
    p.add_argument("--cache", help="generated images, reused on rerun (default: runs/augment-study/synthetic)")
    p.add_argument("--model-train-manifest", action="append", metavar="MANIFEST",
                   help="the generative model's training manifest(s) (default: its train_config.yaml)")
    p.add_argument("--n-real", type=int, help="real training images per class (multi-label: in all; default 150)")
    p.add_argument("--n-synthetic", type=int, help="synthetic training images per class (default: --n-real)")
    p.add_argument("--seeds", type=lambda t: tuple(int(x) for x in _csv_list(t)),
                   help="comma-separated classifier seeds (default 0,1,2)")
    p.add_argument("--arms", type=_csv_list, help="comma-separated subset of real,synthetic,real+synthetic,"
                   "synthetic-then-real (default: all)")
    p.add_argument("--epochs", type=int, help="classifier epochs (and fine-tuning epochs; default 20)")
    p.add_argument("--matched-steps", action="store_true", default=None,
                   help="real-only and synthetic-only arms train as many steps as the real + synthetic arms")
    p.add_argument("--image-size", type=int, help="classifier input side in pixels (default 64)")
    _add_sampling_args(p, seed_help="generation seed (image k of a prompt gets a fixed seed from it)")
    p.add_argument("--device", help="generation device: cpu | cuda | cuda:N (default: cpu)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_augment_study)


def _cmd_augment_study(args: argparse.Namespace) -> int:
    from cxrgen.config.augment import augment_study_config
    from cxrgen.evaluate.augment.study import JSON_NAME, run_augment_study

    mtm = tuple(args.model_train_manifest) if args.model_train_manifest else None
    cfg = augment_study_config(
        args.config, args.set, manifest=args.manifest, out_dir=args.out, label_column=args.label_column,
        label_columns=args.label_columns, classes=args.classes, view=args.view, model=args.model,
        synthetic_csv=args.synthetic_csv, cache_dir=args.cache, model_train_manifests=mtm, n_real=args.n_real,
        n_synthetic=args.n_synthetic, seeds=args.seeds, arms=args.arms, epochs=args.epochs,
        matched_steps=args.matched_steps, image_size=args.image_size, steps=args.steps, sampler=args.sampler,
        guidance_scale=args.guidance_scale,
        generation_seed=args.seed, device=args.device, progress=False if args.no_progress else None)
    result = run_augment_study(cfg)
    for arm, entry in result["auroc"]["arms"].items():
        low, high = entry["macro"]["ci"]
        print(f"{arm:>20}: macro AUROC {entry['macro']['auroc']:.3f} [{low:.3f}, {high:.3f}]")
    print(f"wrote {Path(cfg.out_dir) / JSON_NAME} (+ .md, .png)")
    return 0


# --- serve ------------------------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="web demo (Gradio): report text in, synthetic chest X-rays out")
    p.add_argument("--model", help="model directory or hub id (default: the packaged model)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=7860, help="port to listen on")
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import time

    start = time.perf_counter()
    try:
        from cxrgen.serve.app import start_server
    except ImportError as exc:
        raise CxrgenError(f"the demo needs Gradio ({exc}): pip install 'cxrgen[demo]'") from exc
    server = start_server(args.model, host=args.host, port=args.port, device=args.device)
    try:
        print(f"cxrgen demo serving at {server.url} (page up {time.perf_counter() - start:.1f} s after start; "
              "Ctrl+C stops it)", flush=True)
        server.loader.get()  # a model that cannot load ends the command with its error
        print(f"model ready {time.perf_counter() - start:.1f} s after start", flush=True)
        server.app.block_thread()
    finally:
        server.close()
    return 0


# --- main -------------------------------------------------------------------------------------
#: What survives a Ctrl-C of a command and how to continue (docs/failure_behaviour.md).
_RESUME_HINTS = {
    "generate": "finished images are kept: the same command skips them and makes the rest",
    "evaluate": "generated images are kept: the same command reuses them",
    "augment-study": "generated images are kept in --cache: the same command reuses them",
    "train": "continue from the last checkpoint with --resume latest",
    "cache": "run the same command again",
}


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every sub-command."""
    parser = argparse.ArgumentParser(prog="cxrgen", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_prepare(sub)
    _add_label(sub)
    _add_info(sub)
    _add_tokenizer(sub)
    _add_train_autoencoder(sub)
    _add_phantom(sub)
    _add_twin(sub)
    _add_train_multiview(sub)
    _add_train_evaluator(sub)
    _add_train_reid(sub)
    _add_train_evaluator_ssl(sub)
    _add_calibrate_filter(sub)
    _add_cache(sub)
    _add_train(sub)
    _add_generate(sub)
    _add_control(sub)
    _add_evaluate(sub)
    _add_evaluate_multiview(sub)
    _add_augment_study(sub)
    _add_serve(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cxrgen`` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except CxrgenError as exc:
        print(f"cxrgen {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the machine, not the input: a full disk, a lost mount, a permission
        if args.verbose:
            raise
        print(f"cxrgen {args.command}: error: {exc} (rerun with -v for the traceback)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C: one line, exit 128 + SIGINT like a shell
        print(f"cxrgen {args.command}: interrupted; {_RESUME_HINTS.get(args.command, 'nothing was finished')}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
