"""Figures and the Markdown summary of trainer.gan.evaluate (matplotlib, headless)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from trainer.core.report import figure, tile_images


def save_png(image: np.ndarray, path: str) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def save_pca(real: np.ndarray, generated: np.ndarray, share, path: str) -> None:
    """The study's figure: both sets on the first factorial plane, axes with explained variance."""
    fig = figure(6, 5)
    ax = fig.subplots()
    ax.scatter(real[:, 0], real[:, 1], s=14, alpha=0.7, label=f"real (n={len(real)})")
    ax.scatter(generated[:, 0], generated[:, 1], s=14, alpha=0.7, marker="^",
               label=f"generated (n={len(generated)})")
    ax.set_xlabel(f"PC1 ({100 * share[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * share[1]:.1f}% of variance)")
    ax.set_title("PCA of real vs generated images (pixels)")
    ax.legend()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


def save_real_vs_generated(real: np.ndarray, generated: np.ndarray, path: str) -> None:
    """Two grids side by side, real on the left, with a white gutter between."""
    left, right = tile_images(real), tile_images(generated)
    height = max(left.shape[0], right.shape[0])
    canvas = np.full((height, left.shape[1] + 16 + right.shape[1], 3), 255, np.uint8)
    canvas[:left.shape[0], :left.shape[1]] = left
    canvas[:right.shape[0], left.shape[1] + 16:] = right
    save_png(canvas, path)


def save_pairs(generated: np.ndarray, nearest: np.ndarray, distances, path: str) -> None:
    """Each generated image (top row) above its nearest training image, distance in the title."""
    n = len(generated)
    fig = figure(1.6 * n, 3.6)
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        axes[0, i].imshow(generated[i])
        axes[0, i].set_title(f"d={distances[i]:.3f}", fontsize=8)
        axes[1, i].imshow(nearest[i])
        for ax in axes[:, i]:
            ax.axis("off")
    axes[0, 0].text(-0.1, 0.5, "generated", transform=axes[0, 0].transAxes, rotation=90,
                    va="center", ha="right")
    axes[1, 0].text(-0.1, 0.5, "nearest train", transform=axes[1, 0].transAxes, rotation=90,
                    va="center", ha="right")
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)


def markdown_report(report: dict) -> str:
    """gan_eval.md: the numbers a reader needs, each with what it means."""
    lines = ["# GAN evaluation", "",
             f"- checkpoint: `{report['checkpoint']}` ({report['architecture']})",
             f"- real data: `{report['real_data_dir']}` split `{report['train_split']}`; "
             f"images: {report['counts']}",
             f"- feature extractor: **{report['feature_extractor']}** "
             f"({report['feature_dim']} features)", "",
             "| metric | generated vs train | held-out real vs train (floor) |",
             "|---|---|---|"]
    floor = report.get("heldout_floor", {})

    floor_fid = f"{floor['fid']:.4g}" if "fid" in floor else "n/a"
    lines.append(f"| FID | {report['fid']:.4g} | {floor_fid} |")
    kid = report["kid"]
    floor_kid = floor.get("kid")
    lines.append(f"| KID (x1000) | {1000 * kid['mean']:.3g} ± {1000 * kid['std']:.2g} | "
                 + (f"{1000 * floor_kid['mean']:.3g} ± {1000 * floor_kid['std']:.2g}"
                    if floor_kid else "n/a") + " |")
    c2st = report["c2st"]
    floor_c2st = floor.get("c2st")
    lines.append(f"| C2ST accuracy (95% CI) | {c2st['accuracy']:.3f} "
                 f"[{c2st['ci95'][0]:.3f}, {c2st['ci95'][1]:.3f}] | "
                 + (f"{floor_c2st['accuracy']:.3f} [{floor_c2st['ci95'][0]:.3f}, "
                    f"{floor_c2st['ci95'][1]:.3f}]" if floor_c2st else "n/a") + " |")
    lines += ["", "C2ST: 0.5 means the classifier cannot tell the sets apart; 1.0 means it "
              "always can. FID/KID on small sets are biased upwards: compare with the floor.", ""]
    cues = report.get("c2st_by_cue")
    if cues:
        lines += ["What gives generated images away: the same C2ST on a few image statistics "
                  "(0.5 = this cue does not separate them): colour = per-image RGB mean and "
                  "std; sharpness = |Laplacian| mean, 90th percentile and max; layout = the "
                  "image at 8x8.", "",
                  "| cue | generated vs train | held-out real vs train |", "|---|---|---|"]
        for name, cue in cues.items():
            floor_value = cue["heldout_floor"]
            lines.append(f"| {name} | {cue['generated']:.3f} | "
                         + (f"{floor_value:.3f}" if floor_value is not None else "n/a") + " |")
        lines.append("")
    memo = report["memorization"]
    if "skipped" in memo:
        lines.append(f"Memorization: skipped ({memo['skipped']}).")
    else:
        lines += [f"Memorization ({memo['space']}): {memo['count_below']} generated images "
                  f"({100 * memo['share_below']:.1f}%) lie closer to a training image than "
                  f"{memo['percentile']:g}% of held-out real images do (threshold "
                  f"{memo['threshold']:.4g}); median nearest-train distance generated "
                  f"{memo['generated_median']:.4g} vs held-out {memo['heldout_median']:.4g}. "
                  "See closest_pairs.png."]
    lines += per_class_lines(report.get("per_class"))
    lines += class_agreement_lines(report.get("class_agreement"))
    pca = report["pca"]
    lines += ["", f"PCA ({pca['space']}, {pca['images_per_set']} images per set): PC1 "
              f"{100 * pca['explained_variance'][0]:.1f}%, PC2 "
              f"{100 * pca['explained_variance'][1]:.1f}% of variance. See pca.png, "
              "real_vs_generated.png (real left), interpolation.png.", ""]
    return "\n".join(lines)


def _floor(entry: dict, key: str, fmt) -> str:
    floor = entry.get("heldout_floor")
    return fmt(floor[key]) if floor else "n/a"


def class_agreement_lines(agreement: dict | None) -> list[str]:
    """The class-agreement table (evaluation.class_agreement), when a classifier was given."""
    if not agreement:
        return []
    generated, real = agreement["generated"], agreement.get("heldout_real")
    classes = list(generated["per_class_recall"])

    def share(value) -> str:
        return "n/a" if value is None else f"{value:.2f}"

    lines = ["", "## Class agreement", "",
             f"The classifier `{agreement['classifier']}` (trained on real images, input "
             f"{agreement['classifier_side']} px) labels {agreement['generated_per_class']} "
             "generated images of each class; agreement = the share it calls the class they "
             "were generated as; held-out real = its recall on real images the GAN never saw "
             "(what real images would reach). The other columns: where the generated images "
             "went instead.", "",
             "| generated as | agreement | held-out real | " + " | ".join(
                 f"called {c}" for c in classes) + " |",
             "|---|---|---|" + "---|" * len(classes)]
    for i, name in enumerate(classes):
        row = generated["confusion_matrix"][i]
        if name in agreement.get("skipped", []):
            lines.append(f"| {name} | skipped: too few generated | "
                         f"{share(real['per_class_recall'][name]) if real else 'n/a'} |"
                         + " |" * len(classes))
            continue
        total = max(1, sum(row))
        lines.append(f"| {name} | {share(generated['per_class_recall'][name])} | "
                     f"{share(real['per_class_recall'][name]) if real else 'n/a'} | "
                     + " | ".join(f"{n / total:.2f}" for n in row) + " |")
    lines.append(f"| balanced | {generated['balanced_accuracy']:.3f} | "
                 f"{real['balanced_accuracy']:.3f} |" if real else
                 f"| balanced | {generated['balanced_accuracy']:.3f} | n/a |")
    return lines


def per_class_lines(per_class: dict | None) -> list[str]:
    """The per-class table of a diagnosis-conditional run (none for other runs)."""
    if not per_class:
        return []
    lines = ["", "## Per class", "",
             "Each class's generated images against that class's real train images; the floor "
             "is that class's held-out real images against the same train images.", "",
             "| class | train / held-out / generated | FID (floor) | C2ST [95%] (floor) | "
             "memorized |", "|---|---|---|---|---|"]
    for name, entry in per_class.items():
        n = entry["counts"]
        counts = f"{n['train']} / {n['heldout']} / {n['generated']}"
        if "skipped" in entry:
            lines.append(f"| {name} | {counts} | skipped: {entry['skipped']} | | |")
            continue
        c2st = entry["c2st"]
        memo = entry["memorization"]
        memorized = ("n/a" if "skipped" in memo
                     else f"{memo['count_below']} ({100 * memo['share_below']:.1f}%)")
        lines.append(f"| {name} | {counts} | {entry['fid']:.4g} "
                     f"({_floor(entry, 'fid', lambda v: f'{v:.4g}')}) | "
                     f"{c2st['accuracy']:.3f} [{c2st['ci95'][0]:.3f}, {c2st['ci95'][1]:.3f}] "
                     f"({_floor(entry, 'c2st', lambda v: format(v['accuracy'], '.3f'))}) | "
                     f"{memorized} |")
    lines += ["", "Grids (real left, generated right): "
              + ", ".join(f"{e['grid']}" for e in per_class.values() if "grid" in e) + "."]
    return lines
