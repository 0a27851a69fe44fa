"""The `featureinterp` command line: its subcommands and flags (cli.py runs them).

Flag values are only declared here; cli.main parses them (featureinterp/preflight.py) so a typo
stops with one line before anything is loaded.
"""

from __future__ import annotations

import argparse

from featureinterp.config import PRESET_ENV


def build_parser(description: str) -> argparse.ArgumentParser:
    """The parser of `featureinterp` (run, plan, presets, layers, simulate, scores)."""
    parser = argparse.ArgumentParser(prog="featureinterp", description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    p_run = sub.add_parser("run", help="materialize the main lineage of a preset")
    p_run.add_argument("--preset", help=f"preset name (default: ${PRESET_ENV} or 'embedded')")
    p_run.add_argument("--force", action="store_true", help="rebuild stages that already exist")
    p_run.add_argument(
        "-v", "--verbose", action="store_true",
        help="stream every log line and Dagster event (default: one line per stage; the whole log "
        "goes to a file whose path is printed)",
    )
    p_run.add_argument(
        "--no-explain", action="store_true", help="stop after records (skip explanations and scores)"
    )
    p_run.add_argument(
        "--conditions", help="comma-separated experiment conditions to explain (default: the preset's)"
    )
    p_run.add_argument("--features", help="comma-separated feature indices (default: the preset's)")
    p_run.add_argument(
        "--layers", help="comma-separated layer keys, in the order to run them, e.g. SYN,L05 (default: all)"
    )
    p_run.add_argument(
        "--standin",
        action="store_true",
        help="run a paper preset on CPU with tiny random-weight stand-ins of its models and SAEs "
        "(same architectures and loading code; the numbers are meaningless by design)",
    )
    p_run.add_argument(
        "--whole-grid",
        action="store_true",
        help="paper presets: run every condition on every layer x feature of the preset, not only "
        "on the layers x features of the figures that draw it",
    )
    p_plan = sub.add_parser("plan", help="partitions, runs, model loads, tokens and GPU hours of a preset")
    p_plan.add_argument("--preset")
    p_plan.add_argument("--conditions", help="comma-separated conditions (default: the preset's)")
    p_plan.add_argument("--json", action="store_true", help="print one JSON object")
    p_plan.add_argument(
        "--paper-grid",
        action="store_true",
        help="the paper's 8 layers x features 0-29 (Figs. 4-5), not the whole preset",
    )
    p_plan.add_argument(
        "--whole-grid", action="store_true", help="every condition on every partition (as `run --whole-grid`)"
    )
    p_plan.add_argument(
        "--calibration",
        metavar="FILE",
        help="project GPU hours from the rates scripts/gpu-check measured (its JSON file) instead of an "
        "assumed utilisation",
    )
    p_presets = sub.add_parser("presets", help="list the built-in presets, or print one as a file")
    presets_sub = p_presets.add_subparsers(dest="presets_command", required=True)
    presets_sub.add_parser("list", help="the built-in preset names")
    p_show = presets_sub.add_parser("show", help="print a preset (built-in or file) as TOML, YAML or JSON")
    p_show.add_argument("name", nargs="?", help=f"preset name or file (default: ${PRESET_ENV} or 'embedded')")
    p_show.add_argument("--format", default="toml", choices=["toml", "yaml", "json"])
    p_layers = sub.add_parser("layers", help="register the preset's layers as dynamic partitions")
    p_layers.add_argument("--preset")
    p_sim = sub.add_parser("simulate", help="score a hand-written explanation on stored test records")
    p_sim.add_argument("layer", help="layer key, e.g. L05 (or SYN for the synthetic features)")
    p_sim.add_argument("feature", help="feature key, e.g. F0001")
    p_sim.add_argument("explanation", help="free text, or a JSON rule list with --structured")
    p_sim.add_argument(
        "--structured", action="store_true", help='explanation is [{"activates_on":..,"strength":..}]'
    )
    p_sim.add_argument("--preset")
    p_scores = sub.add_parser(
        "scores", help="print the stored test scores per (layer, feature) and condition"
    )
    p_scores.add_argument("--preset")
    p_scores.add_argument("--explanations", action="store_true", help="print each explanation under its row")
    p_reseed = sub.add_parser(
        "reseed",
        help="re-explain a slice with more seeds: each condition's between-seed spread next to its "
        "test-record interval (stored explanations stay as they are)",
    )
    p_reseed.add_argument("--seeds", type=int, default=3, help="seeds per feature, the stored one included (default 3)")
    p_reseed.add_argument("--preset")
    p_reseed.add_argument("--conditions", help="comma-separated conditions (default: the preset's)")
    p_reseed.add_argument("--layers", help="comma-separated layer keys, e.g. L05,SYN (default: all)")
    p_reseed.add_argument("--features", help="comma-separated feature indices (default: all)")
    p_reseed.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser
