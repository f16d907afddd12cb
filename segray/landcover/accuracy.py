"""Accuracy and error-adjusted areas of a class map from a stratified reference sample, following
Olofsson et al. (2014), "Good practices for estimating area and assessing accuracy of land change",
Remote Sensing of Environment 148, 42-57 (equation numbers below are the paper's).

The map classes are the strata: each reference point was drawn within its map class, and the class's
share of the mapped area (its weight W_i) comes from the map itself, the area of its pixels from the
masks' CRS (:mod:`segray.geo.areas`), never from the sample. Reference points outside the map, on
nodata, or without a reference class yet are listed and left out; a reference class the map does not
have is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

#: The normal quantile of a two-sided 95% confidence interval.
Z95 = 1.96


@dataclass(frozen=True)
class Estimates:
    """Olofsson et al. (2014)'s estimates for q classes (rows of ``counts``: map class; columns: reference
    class, in the same order). Areas are in the unit of the mapped areas given; SE: standard error;
    ``*_ci``: half-width of the confidence interval (z * SE)."""

    counts: np.ndarray  # n_ij, sample counts (q, q)
    proportions: np.ndarray  # p_ij, estimated area proportions (q, q) (eq. 9 terms)
    weights: np.ndarray  # W_i, mapped area proportions (q,)
    overall: float  # O (eq. 1)
    overall_se: float  # sqrt of eq. 5
    users: np.ndarray  # U_i (eq. 2)
    users_se: np.ndarray  # sqrt of eq. 6
    producers: np.ndarray  # P_j (eq. 3)
    producers_se: np.ndarray  # sqrt of eq. 7
    area_proportion: np.ndarray  # p_.k, the estimated share of each class (eq. 9)
    area_proportion_se: np.ndarray  # sqrt of eq. 10
    area: np.ndarray  # error-adjusted area A_k = A_tot * p_.k
    area_se: np.ndarray  # A_tot * SE(p_.k) (eq. 11 without the 1.96)
    z: float

    def ci(self, se: np.ndarray | float) -> np.ndarray | float:
        return self.z * se


def olofsson(counts: np.ndarray, mapped_area: np.ndarray, z: float = Z95) -> Estimates:
    """The estimators of Olofsson et al. (2014) for a stratified random sample whose strata are the map
    classes: ``counts[i, j]`` points of map class i have reference class j; ``mapped_area[i]`` is the
    map's area of class i (any unit: the areas come back in it).

    p_ij = W_i n_ij / n_i. (eq. 9's terms), overall accuracy O = sum_j p_jj (eq. 1), user's accuracy
    U_i = p_ii / p_i. (eq. 2), producer's P_j = p_jj / p_.j (eq. 3); their variances eqs. 5, 6 and 7;
    the error-adjusted area of class k is A_tot * p_.k (eq. 9) with SE(p_.k) from eq. 10 and its
    confidence interval A_tot * z * SE(p_.k) (eq. 11). A class mapped with fewer than two points has
    NaN standard errors (n_i. - 1 divides them); one not mapped (W_i = 0) contributes nothing.
    """
    n = np.asarray(counts, dtype=np.float64)
    area = np.asarray(mapped_area, dtype=np.float64)
    if n.ndim != 2 or n.shape[0] != n.shape[1] or area.shape != (n.shape[0],):
        raise ValueError(f"counts must be (q, q) and mapped areas (q,), got {n.shape} and {area.shape}")
    if ((area > 0) & (n.sum(axis=1) == 0)).any():
        raise ValueError("every mapped class (stratum) needs reference points")
    a_tot = area.sum()
    w = area / a_tot
    n_i = n.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(n_i[:, None] > 0, n / n_i[:, None], 0.0)  # n_ij / n_i.
        p = w[:, None] * share
        users = np.diag(share).copy()
        users[n_i == 0] = np.nan
        users_var = users * (1 - users) / (n_i - 1)  # eq. 6
        overall = float(np.trace(p))
        overall_var = float(np.nansum(np.where(w > 0, w**2 * users_var, 0.0)))  # eq. 5
        if (w[n_i < 2] > 0).any():
            overall_var = float("nan")
        col = p.sum(axis=0)  # p_.j
        producers = np.diag(p) / col
        cell_var = np.where(w[:, None] > 0, share * (1 - share) / (n_i[:, None] - 1), 0.0)
        producers_se = np.sqrt(_producers_var(area, a_tot * col, producers, users_var, cell_var))
        area_proportion_se = np.sqrt((w[:, None] ** 2 * cell_var).sum(axis=0))  # eq. 10
    return Estimates(
        counts=n.astype(np.int64),
        proportions=p,
        weights=w,
        overall=overall,
        overall_se=float(np.sqrt(overall_var)),
        users=users,
        users_se=np.sqrt(users_var),
        producers=producers,
        producers_se=producers_se,
        area_proportion=col,
        area_proportion_se=area_proportion_se,
        area=a_tot * col,
        area_se=a_tot * area_proportion_se,
        z=z,
    )


def _producers_var(
    area: np.ndarray, ref_total: np.ndarray, producers: np.ndarray, users_var: np.ndarray, cell_var: np.ndarray
) -> np.ndarray:
    """Eq. 7: V(P_j) = [N_j.^2 (1-P_j)^2 U_j(1-U_j)/(n_j.-1) + P_j^2 sum_{i!=j} N_i.^2 (n_ij/n_i.)(1-n_ij/n_i.)
    /(n_i.-1)] / N^_.j^2, with N_i. the mapped area of class i and N^_.j = sum_i N_i. n_ij/n_i. the estimated
    area of reference class j (areas or pixel counts alike: the ratio has no unit). ``users_var`` is
    U_j(1-U_j)/(n_j.-1) (eq. 6), ``cell_var[i, j]`` (n_ij/n_i.)(1-n_ij/n_i.)/(n_i.-1)."""
    q = len(area)
    off = cell_var * (1 - np.eye(q))  # i != j
    own = np.where(area > 0, area**2 * (1 - producers) ** 2 * users_var, 0.0)
    others = producers**2 * ((area**2)[:, None] * off).sum(axis=0)
    return (own + others) / ref_total**2


def class_rows(est: Estimates, names: list[str], mapped_m2: np.ndarray, points: np.ndarray) -> list[dict[str, Any]]:
    """One row per class: mapped area, weight, points, accuracies and error-adjusted area (ha), each
    with its SE and 95% confidence interval."""
    rows = []
    for k, name in enumerate(names):
        ua, pa, ha = float(est.users[k]), float(est.producers[k]), float(est.area[k]) / 1e4
        ua_se, pa_se, ha_se = float(est.users_se[k]), float(est.producers_se[k]), float(est.area_se[k]) / 1e4
        rows.append(
            {
                "class": name,
                "mapped_area_ha": float(mapped_m2[k]) / 1e4,
                "weight": float(est.weights[k]),
                "points": int(points[k]),
                "users_accuracy": ua,
                "users_accuracy_se": ua_se,
                "users_accuracy_ci95": float(est.ci(ua_se)),
                "producers_accuracy": pa,
                "producers_accuracy_se": pa_se,
                "producers_accuracy_ci95": float(est.ci(pa_se)),
                "area_proportion": float(est.area_proportion[k]),
                "area_proportion_se": float(est.area_proportion_se[k]),
                "error_adjusted_area_ha": ha,
                "error_adjusted_area_ha_se": ha_se,
                "error_adjusted_area_ha_ci95": float(est.ci(ha_se)),
            }
        )
    return rows


@dataclass
class AccuracyReport:
    """What ``segray landcover accuracy`` found and wrote."""

    map: str
    reference: str
    output: str
    classes: list[str]
    estimates: Estimates
    rows: list[dict[str, Any]]
    points_read: int
    left_out: list[dict[str, Any]]
    files: list[str]

    @property
    def points_used(self) -> int:
        return int(self.estimates.counts.sum())

    def left_out_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.left_out:
            counts[p["why"]] = counts.get(p["why"], 0) + 1
        return counts


def _fmt(value: float, digits: int = 3) -> str:
    return "n/a" if not np.isfinite(value) else f"{value:.{digits}f}"


def _matrix_md(title: str, names: list[str], m: np.ndarray, cell: Any) -> list[str]:
    lines = [f"### {title}", "", "| map \\ reference | " + " | ".join(names) + " | total |"]
    lines.append("|---" * (len(names) + 2) + "|")
    for i, name in enumerate(names):
        lines.append(f"| {name} | " + " | ".join(cell(v) for v in m[i]) + f" | {cell(m[i].sum())} |")
    lines.append("| total | " + " | ".join(cell(v) for v in m.sum(axis=0)) + f" | {cell(m.sum())} |")
    return [*lines, ""]


def markdown(report: AccuracyReport) -> str:
    """The error matrices, the per-class accuracies and areas, and the overall accuracy as markdown."""
    est, names = report.estimates, report.classes
    ci = est.ci(est.overall_se)
    lines = [
        f"## Accuracy of {report.map}",
        "",
        f"Reference: {report.reference} ({report.points_used} points used of {report.points_read}; "
        f"{len(report.left_out)} left out). Estimators of Olofsson et al. (2014), stratified by map class; "
        "intervals are 95% confidence intervals.",
        "",
        f"Overall accuracy: {_fmt(est.overall)} ± {_fmt(float(ci))} (SE {_fmt(est.overall_se)})",
        "",
    ]
    lines += _matrix_md("Error matrix, sample counts", names, est.counts, lambda v: f"{int(v)}")
    lines += _matrix_md("Error matrix, estimated area proportions", names, est.proportions, lambda v: f"{v:.4f}")
    lines += [
        "### Per class",
        "",
        "| class | mapped area (ha) | points | user's accuracy | producer's accuracy | error-adjusted area (ha) |",
        "|---|---|---|---|---|---|",
    ]
    for r in report.rows:
        lines.append(
            f"| {r['class']} | {r['mapped_area_ha']:,.0f} | {r['points']} "
            f"| {_fmt(r['users_accuracy'])} ± {_fmt(r['users_accuracy_ci95'])} "
            f"| {_fmt(r['producers_accuracy'])} ± {_fmt(r['producers_accuracy_ci95'])} "
            f"| {r['error_adjusted_area_ha']:,.0f} ± {r['error_adjusted_area_ha_ci95']:,.0f} |"
        )
    if report.left_out:
        lines += ["", "### Left out", "", "| point | x | y | why |", "|---|---|---|---|"]
        lines += [f"| {p['point_id']} | {p['x']:.2f} | {p['y']:.2f} | {p['why']} |" for p in report.left_out]
    return "\n".join(lines) + "\n"


def _matrix_table(names: list[str], m: np.ndarray) -> Any:
    import pyarrow as pa

    cols: dict[str, Any] = {"map_class": pa.array(names, pa.string())}
    cols |= {name: pa.array(m[:, j].tolist()) for j, name in enumerate(names)}
    cols["total"] = pa.array(m.sum(axis=1).tolist())
    return pa.table(cols)


def _json_value(v: Any) -> Any:
    """NaN (an undefined SE) as null: JSON has no NaN."""
    if isinstance(v, float) and not np.isfinite(v):
        return None
    return v


def write_report(report: AccuracyReport) -> list[str]:
    """``classes.parquet``, ``error_matrix_counts.parquet``, ``error_matrix_proportions.parquet``,
    ``accuracy.json`` and ``accuracy.md`` under the output folder (local or s3://)."""
    import json

    import pyarrow as pa

    from segray import storage
    from segray.outputs.schema import to_parquet_bytes

    est, names = report.estimates, report.classes
    files = {
        "classes.parquet": to_parquet_bytes(pa.Table.from_pylist(report.rows)),
        "error_matrix_counts.parquet": to_parquet_bytes(_matrix_table(names, est.counts)),
        "error_matrix_proportions.parquet": to_parquet_bytes(_matrix_table(names, est.proportions)),
        "accuracy.md": markdown(report).encode(),
    }
    summary = {
        "map": report.map,
        "reference": report.reference,
        "method": "Olofsson et al. (2014), stratified random sampling by map class; 95% confidence intervals",
        "z": est.z,
        "points_read": report.points_read,
        "points_used": report.points_used,
        "left_out_counts": report.left_out_counts(),
        "left_out": report.left_out,
        "classes": names,
        "overall_accuracy": _json_value(est.overall),
        "overall_accuracy_se": _json_value(est.overall_se),
        "overall_accuracy_ci95": _json_value(float(est.ci(est.overall_se))),
        "error_matrix_counts": est.counts.tolist(),
        "error_matrix_proportions": est.proportions.tolist(),
        "per_class": [{k: _json_value(v) for k, v in r.items()} for r in report.rows],
    }
    files["accuracy.json"] = json.dumps(summary, indent=2).encode()
    written = []
    for name, data in files.items():
        uri = storage.join(report.output, name)
        storage.write_bytes(uri, data)
        written.append(uri)
    return written


def run_accuracy(
    map_uri: str, reference: str, output: str, column: str = "reference", labels: str | None = None
) -> AccuracyReport:
    """Read the map's areas and the reference points, estimate, and write the report under ``output``."""
    from segray.landcover.maps import map_totals, open_map
    from segray.landcover.reference import place, read_reference

    cmap = open_map(map_uri, labels)
    totals = map_totals(cmap)
    points = read_reference(reference, column, cmap.crs)
    placed = place(cmap, points)
    ids = sorted(set(np.flatnonzero(totals.pixels).tolist()) | set(placed.reference_ids.tolist()))
    index = {c: k for k, c in enumerate(ids)}
    counts = np.zeros((len(ids), len(ids)), dtype=np.int64)
    np.add.at(counts, ([index[int(c)] for c in placed.map_ids], [index[int(c)] for c in placed.reference_ids]), 1)
    names = [cmap.name(c) for c in ids]
    mapped = totals.area_m2[ids]
    unsampled = [n for n, a, k in zip(names, mapped, counts.sum(axis=1), strict=True) if a > 0 and k == 0]
    if unsampled:
        raise ValueError(
            f"map classes {unsampled} have mapped area but no usable reference points: each map class is a "
            "stratum, and every stratum needs points (draw them with `segray landcover sample`)"
        )
    est = olofsson(counts, mapped)
    report = AccuracyReport(
        map_uri, reference, output, names, est, class_rows(est, names, mapped, counts.sum(axis=1)),
        len(points.ids), placed.left_out, [],
    )  # fmt: skip
    report.files = write_report(report)
    return report
