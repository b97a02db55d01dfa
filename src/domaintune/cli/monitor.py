"""`domaintune monitor`: what production traffic says (the database `serve --store` writes)."""

from __future__ import annotations

import argparse

from domaintune.errors import UserError


def build_monitor(p: argparse.ArgumentParser) -> None:
    p.epilog = ("examples:\n  domaintune serve embedded --adapter icd=runs/icd --store traffic.db\n"
                "  domaintune monitor drift --reference prepared/ --store traffic.db --model icd -o drift/\n"
                "  domaintune monitor drift --reference prepared/ --store postgresql+psycopg://u@db/traffic "
                "--since-days 7\n"
                "  domaintune monitor shadow --store traffic.db --model icd -o shadow/\n"
                "  domaintune monitor export --store traffic.db --since-days 7 --exclude prepared/ -o new.jsonl\n"
                "  domaintune monitor promote runs/v2 --over runs/v1 --test prepared/test.jsonl -o promote/")
    p.add_argument("action", choices=["drift", "shadow", "export", "promote"],
                   help="drift: live prompts (and predicted labels) against training; shadow: a --shadow "
                        "candidate's answers against production's; export: feedback as training records; "
                        "promote: CANDIDATE over --over RUN on --test data, only if not significantly worse")
    p.add_argument("candidate", nargs="?", help="promote: the candidate run")
    p.add_argument("--over", help="promote: the run in production")
    p.add_argument("--test", help="promote: the fixed test set both are scored on")
    p.add_argument("--label-field", help="promote: metadata field holding the label (classification metrics)")
    p.add_argument("--reference", help="the prepared training data (folder or train.jsonl)")
    p.add_argument("--store", help="the traffic store: the SQLite path or SQLAlchemy URL given to serve --store")
    p.add_argument("--window", type=int, help="requests per window (default 200 for drift, 100 for shadow)")
    p.add_argument("--model", help="only requests to this served name")
    p.add_argument("--since-days", type=float, help="only requests of the last N days")
    p.add_argument("--predictions", help="eval's predictions.jsonl on validation: its confidences are the "
                                         "reference for the confidence-drop alarm")
    p.add_argument("--exclude", action="append", default=[], metavar="DATA",
                   help="export: prepared folders or JSONL whose questions must not come back (repeatable)")
    p.add_argument("--min-rating", type=int, default=4, help="export: the lowest star rating that approves (default 4)")
    p.add_argument("-o", "--output-dir", help="where the report and its plot go (default drift/ or shadow/); "
                                              "export: the JSONL to write")


def run_monitor(a: argparse.Namespace) -> int:
    from domaintune import api

    if a.action == "shadow":
        return _shadow(a)
    if a.action == "export":
        return _export(a)
    if a.action == "promote":
        return _promote(a)
    if not (a.reference and a.store):
        raise UserError("monitor drift needs --reference and --store",
                        hint="e.g. domaintune monitor drift --reference prepared/ --store traffic.db")
    window = a.window or 200
    report, paths = api.monitor_drift(a.reference, a.store, window=window, model=a.model, since_days=a.since_days,
                                      predictions=a.predictions, output_dir=a.output_dir or "drift")
    print(f"{report['requests']:,} answered requests in {len(report['windows'])} window(s) of {window}, "
          f"against {report['reference_rows']:,} training rows ({report['reference']})")
    for i, w in enumerate(report["windows"]):
        cells = "  ".join(f"{k} {v['value']:.3f}{'!' if v['alarm'] else ''} (<= {v['threshold']:.3f})"
                          for k, v in w["statistics"].items())
        print(f"  window {i} (requests {w['start']}-{w['end']}): {cells}")
    first = report["first_alarm"]
    print("no drift alarm" if first is None else
          f"DRIFT: first alarm at request {first['request']} ({', '.join(first['statistics'])}); "
          f"{report['alarms']} of {len(report['windows'])} windows over their thresholds")
    print(f"report: {paths['json']}" + (f"  plot: {paths['plot']}" if "plot" in paths else ""))
    return 0


def _shadow(a: argparse.Namespace) -> int:
    from domaintune import api

    if not a.store:
        raise UserError("monitor shadow needs --store", hint="e.g. domaintune monitor shadow --store traffic.db")
    report, paths = api.monitor_shadow(a.store, window=a.window or 100, model=a.model, since_days=a.since_days,
                                       output_dir=a.output_dir or "shadow")
    print(f"{report['cases']:,} shadowed requests: agreement {report['agreement']:.3f}, "
          f"{report['pending_review']:,} waiting for review")
    for w in report["windows"]:
        print(f"  requests {w['start']}-{w['end']}: agreement {w['agreement']:.3f}, identical {w['identical']:.1%}")
    users = report["users"]
    if users["corrections"]:
        print(f"users' corrections ({users['corrections']}): production right {users['production_right']}, "
              f"candidate right {users['candidate_right']} (McNemar p {users['p_value']:.3g}): {users['preferred']}")
    for case in report["largest"][:3]:
        print(f"  {case['disagreement']:.2f}  {case['prompt'][:60]!r}: {case['production'][:40]!r} vs "
              f"{case['candidate'][:40]!r}")
    print(f"report: {paths['json']}" + (f"  plot: {paths['plot']}" if "plot" in paths else ""))
    return 0


def _export(a: argparse.Namespace) -> int:
    from domaintune import api

    if not (a.store and a.output_dir):
        raise UserError("monitor export needs --store and -o FILE.jsonl",
                        hint="e.g. domaintune monitor export --store traffic.db --exclude prepared/ -o new.jsonl")
    out = api.monitor_export(a.store, a.output_dir, since_days=a.since_days, exclude=a.exclude,
                             min_rating=a.min_rating)
    origins = ", ".join(f"{n} {k}" for k, n in out["by_origin"].items()) or "none"
    print(f"{out['records']:,} training records ({origins}) -> {out['output']}")
    for reason, n in out["by_reason"].items():
        print(f"  rejected {n:,}: {reason}")
    print(f"rejects: {out['rejects_file']}  (next: domaintune prepare {out['output']} ... )")
    return 0


def _promote(a: argparse.Namespace) -> int:
    from domaintune import api
    from domaintune.config import load_recipe

    if not (a.candidate and a.over and a.test):
        raise UserError("monitor promote needs CANDIDATE, --over RUN and --test DATA",
                        hint="e.g. domaintune monitor promote runs/v2 --over runs/v1 --test prepared/test.jsonl")
    flags = {"data": a.test, **({"label_field": a.label_field} if a.label_field else {})}
    out = api.monitor_promote(load_recipe(None, [], base={"eval": flags}), a.candidate, a.over,
                              output_dir=a.output_dir or "promote")
    for test in out["tests"].values():
        print(test["verdict"])
    print(("PROMOTE: " if out["promote"] else "KEEP the current run: ")
          + (f"worse on {', '.join(out['worse'])}" if out["worse"] else "not significantly worse on any metric"
             if out["tests"] else "no metric could be tested"))
    print(f"decision: {out['files']['md']}")
    return 0
