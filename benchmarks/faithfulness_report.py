"""Shared reporting of the faithfulness benchmarks (peer_faithfulness.py, real_faithfulness.py).

Every number with its percentile-bootstrap interval over images; the acceptance check as a
*paired* bootstrap (vitx's best method minus each peer, image by image, one resample of the
images for both): "strictly better beyond the interval" = the interval of the difference
excludes 0 on the right side. Methods that rank below the random map are flagged (paired
difference to random; a dagger when its interval excludes 0). Rank agreement: Kendall's tau /
Spearman's rho between the method orders two protocols give on the same metric.
"""
from vitx.evaluate.confidence import bootstrap_mean, paired_difference, rank_agreement, resample_indices

ATTENTION_FLOW = ("raw_attention", "rollout", "grad_rollout", "chefer2021", "transformer_attribution")


def better(pick, a, b):
    return a < b if pick is min else a > b


def intervals(per_image, resamples, seed):
    """{method: {metric: Interval}} from {method: {metric: per-image AUCs}} (shared resamples)."""
    some = next(iter(per_image.values()))
    indices = resample_indices(len(next(iter(some.values()))), resamples, seed)
    return {m: {k: bootstrap_mean(v, indices=indices) for k, v in metrics.items()} for m, metrics in per_image.items()}


def random_flags(per_image, metrics, resamples, seed):
    """{method: [metric title (+ dagger if the paired interval excludes 0)]} where the method
    does worse than the random map."""
    flags = {}
    for name, values in per_image.items():
        if name == "random":
            continue
        for key, title, pick in metrics:
            if key not in values:
                continue
            gap = paired_difference(values[key], per_image["random"][key], resamples, seed)
            if better(pick, 0.0, gap.value):  # the method's AUC is on the wrong side of random's
                flags.setdefault(name, []).append(title.split(" (")[0] + ("†" if gap.excludes(0.0) else ""))
    return flags


def table(cis, library, costs, metrics, flags=None):
    """Markdown table: AUC [95 % interval] per metric, the best non-random value in bold."""
    flags = flags or {}
    best = {key: pick(cis[n][key].value for n in cis if n != "random") for key, _, pick in metrics}
    first = metrics[0][0]
    lines = ["| method | library | " + " | ".join(title for _, title, _ in metrics) + " | cost vs. forward | below random |",
             "|---|---|" + "---|" * (len(metrics) + 2)]
    for name in sorted(cis, key=lambda n: (n == "random", cis[n][first].value * (1 if metrics[0][2] is min else -1))):
        cells = []
        for key, _, _ in metrics:
            ci = cis[name][key]
            text = f"{ci.value:.4f} [{ci.low:.3f}, {ci.high:.3f}]"
            cells.append(f"**{text}**" if ci.value == best[key] and name != "random" else text)
        cost = f"{costs[name]:.1f}x" if name in costs else "-"
        flag = ", ".join(flags.get(name, [])) or ("-" if name != "random" else "")
        lines.append(f"| {name} | {library[name]} | " + " | ".join(cells) + f" | {cost} | {flag} |")
    return "\n".join(lines)


def acceptance(per_image, library, metrics, resamples, seed):
    """Lines: vitx's best method (by mean) against every peer, paired difference and verdict."""
    lines = []
    for key, title, pick in metrics:
        ours = [n for n in per_image if library[n] == "vitx" and key in per_image[n]]
        best = pick(ours, key=lambda n: sum(per_image[n][key]) / len(per_image[n][key]))
        for peer in (n for n in per_image if library[n] not in ("vitx", "-") and key in per_image[n]):
            gap = paired_difference(per_image[best][key], per_image[peer][key], resamples, seed)
            if (gap.high < 0) if pick is min else (gap.low > 0):
                verdict = "strictly better"
            elif (gap.low > 0) if pick is min else (gap.high < 0):
                verdict = "strictly WORSE"
            else:
                verdict = "NOT beyond the interval"
            lines.append(f"{title}: vitx {best} - {library[peer]} {peer} = {gap}: {verdict}")
    return lines


def agreement(by_protocol, metrics):
    """Rank agreement of the protocols, per metric: {metric title: {"A vs. B": {...}}}; scores
    are the mean AUCs of the methods each protocol scored (random included)."""
    out = {}
    for key, title, _ in metrics:
        scores = {p: {m: v[key].value for m, v in cis.items() if key in v} for p, cis in by_protocol.items()}
        scores = {p: s for p, s in scores.items() if len(s) >= 3}
        if len(scores) >= 2:
            out[title] = rank_agreement(scores)
    return out


def agreement_lines(agree):
    return [f"{title}: " + "; ".join(f"{pair}: Kendall {v['kendall']:.2f}, Spearman {v['spearman']:.2f} ({v['methods']} methods)"
                                    for pair, v in pairs.items()) for title, pairs in agree.items()]


def timed_maps(model, methods, pixels, target, seconds, seed):
    """One batch: a plain forward and every method's map, each timed into `seconds`, plus the
    seeded random map (seed: the run's seed and the batch number, so ranks and reruns agree)."""
    import time

    import torch

    with torch.no_grad():
        tick = time.perf_counter()
        model(pixels)
        seconds["forward"] += time.perf_counter() - tick
    maps = {}
    for name, (_, fn) in methods.items():
        tick = time.perf_counter()
        maps[name] = fn(pixels, target).float()
        seconds[name] += time.perf_counter() - tick
    maps["random"] = torch.rand(next(iter(maps.values())).shape, generator=torch.Generator().manual_seed(seed))
    return maps
