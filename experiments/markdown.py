"""report.md: the summary's numbers (:mod:`experiments.summary`) as tables a person reads."""

from __future__ import annotations

from typing import Any


def fmt(estimate: dict[str, Any]) -> str:
    """``0.853 [0.800, 0.900]``, or ``0.853 [n/a]`` where no interval is possible, or ``n/a``."""
    if estimate.get("value") is None:
        return "n/a"
    ci = estimate.get("ci")
    return f"{estimate['value']:.3f} " + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "[n/a]")


def table(header: list[str], rows: list[list[Any]]) -> list[str]:
    """A Markdown table (``|`` in cells escaped)."""
    def line(cells: list[Any]) -> str:
        return "| " + " | ".join(("" if c is None else str(c)).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "---|" * len(header), *(line(r) for r in rows), ""]


def _values(values: list[Any]) -> str:
    return ", ".join(str(v) for v in values)


def _span(first: int, last: int) -> str:
    return str(first) if first == last else f"{first}-{last}"


def protocol_section(summary: dict[str, Any]) -> list[str]:
    versions = summary["versions"]
    boot = summary["bootstrap"]
    rows = [
        [
            g["name"],
            p["algo"],
            p["benchmark"],
            p["reward_function_version"],
            p["max_episode_steps"],
            _values(p["episodes_per_task"]),
            f"{len(g['seeds'])} ({_values(g['seeds'])})",
            p["total_steps"],
            _span(*p["scored_steps"]),
        ]
        for g in summary["groups"]
        for p in [g["protocol"]]
    ]
    header = ["group", "algo", "benchmark", "reward function", "episode length", "eval episodes per task"]
    header += ["seeds", "total steps", "steps at the scored evaluation"]
    return [
        "## Protocol",
        "",
        f"- Scores: **{summary['score']['label']}**.",
        f"- Meta-World {versions['metaworld']} (installed where this report was made; run directories do not "
        f"record it), rliable {versions['rliable']}, mtrl {versions['mtrl']}.",
        f"- Bootstrap: {boot['reps']} samples, seed {boot['seed']}, {boot['confidence']:.0%} intervals, "
        f"{boot['method']}.",
        "",
        *table(header, rows),
    ]


def aggregate_section(summary: dict[str, Any]) -> list[str]:
    label = summary["score"]["label"]
    rows = [
        [g["name"], len(g["seeds"]), fmt(g["mean"]), fmt(g["iqm"]), f"{g['perfect_fraction']:.2f}", g["interval_note"]]
        for g in summary["groups"]
    ]
    header = ["group", "seeds", "mean [95% CI]", "IQM [95% CI]", "perfect (share of scores = 1)", "note"]
    return [f"## Aggregate success: {label}", "", *table(header, rows)]


def improvement_section(summary: dict[str, Any]) -> list[str]:
    names = [g["name"] for g in summary["groups"]]
    if len(names) < 2:
        return []
    cells = {(p["x"], p["y"]): (p.get("note") or fmt(p)) for p in summary["probability_of_improvement"]}
    rows = [[x, *("-" if x == y else cells[(x, y)] for y in names)] for x in names]
    return [
        f"## Probability of improvement: P(row > column), {summary['score']['label']}",
        "",
        *table(["X \\ Y", *names], rows),
    ]


def per_task_section(summary: dict[str, Any]) -> list[str]:
    groups = summary["groups"]
    tasks = list(dict.fromkeys(t for g in groups for t in g["tasks"]))
    rows = [[t, *(fmt(g["per_task"][t]) if t in g["per_task"] else "-" for g in groups)] for t in tasks]
    return [
        f"## Per-task success: {summary['score']['label']} (mean over seeds [95% CI over seeds])",
        "",
        *table(["task", *(g["name"] for g in groups)], rows),
    ]


def curves_section(summary: dict[str, Any]) -> list[str]:
    rows = []
    for g in summary["groups"]:
        c = g["curve"]
        if c is None:
            rows.append([g["name"], 0, "-", "-", "-", "no periodic evaluation shared by all its runs"])
            continue
        mean = c["mean"]
        last = {"value": mean["value"][-1], "ci": [mean["low"][-1], mean["high"][-1]] if mean["low"] else None}
        note = f"left out: {c['left_out_steps']} evaluated steps not shared by every run" if c["left_out_steps"] else ""
        steps = _span(c["steps"][0], c["steps"][-1])
        rows.append([g["name"], len(c["steps"]), steps, _values(c["episodes_per_task"]), fmt(last), note])
    return [
        "## Sample efficiency (periodic evaluations)",
        "",
        "Success against environment steps, at the steps every run of the group was evaluated at "
        "(figures/curves.png). These are periodic evaluations, not the scored ones above.",
        "",
        *table(["group", "steps", "range", "eval episodes per task", "mean at the last step [95% CI]", "note"], rows),
    ]


def runs_section(summary: dict[str, Any]) -> list[str]:
    lines = ["## Runs", ""]
    rows = [
        [g["name"], r["seed"], r["path"], r["step"], r["episodes_per_task"], f"{r['success_rate']:.3f}"]
        for g in summary["groups"]
        for r in g["runs"]
    ]
    lines += table(["group", "seed", "run directory", "scored step", "episodes per task", "success rate"], rows)
    lines += ["### Skipped runs (in no statistic)", ""]
    skipped = [[s["path"], s["reason"]] for s in summary["skipped"]]
    lines += table(["run directory", "reason"], skipped) if skipped else ["None.", ""]
    ignored = [[f["path"], f["reason"]] for f in summary["ignored_files"]]
    if ignored:
        lines += ["### Ignored evaluation files", "", *table(["run directory", "file and reason"], ignored)]
    return lines


def render(summary: dict[str, Any]) -> str:
    """The whole of report.md."""
    figures = [f"![{name}]({name})" for name in summary.get("figures", [])]
    lines = [
        "# mtrl report",
        "",
        f"Every number below is **{summary['score']['label']}** unless a section says otherwise. Statistics after "
        'Agarwal et al. 2021, "Deep Reinforcement Learning at the Edge of the Statistical Precipice", with rliable.',
        "",
        *protocol_section(summary),
        "## How the numbers are formed",
        "",
        *(f"- {line}" for line in summary["aggregation"]),
        "",
        *aggregate_section(summary),
        *improvement_section(summary),
        *per_task_section(summary),
        *curves_section(summary),
        *runs_section(summary),
        "## Figures",
        "",
        *(f"{f}\n" for f in figures),
    ]
    return "\n".join(lines).rstrip() + "\n"
