"""How figures are written (sweeper.analysis.style). CSVs (save_csv): Arrow writes them, pandas reads
back the frame pandas would have written; inside `deferred_writes` they are written by a thread and
complete (never a `.part` left) when the block ends. Images (save): cropped as savefig's
`bbox_inches="tight"` crops them, measured once for the PNG and the PDF."""
from __future__ import annotations

import numpy as np
import pandas as pd

import matplotlib.pyplot as plt
import pytest
from PIL import Image

from sweeper.analysis.style import deferred_writes, save, save_csv


def frame(n: int = 1000) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"trial_id": pd.Categorical(rng.choice(["a1", "b,2", 'c"3'], n)),
                         "layer_index": np.arange(n), "mean_abs_gamma": rng.random(n),
                         "maybe": np.where(rng.random(n) < 0.1, np.nan, rng.random(n)), "moved": rng.random(n) < 0.5,
                         "name": rng.choice(["x", "line\nbreak", None], n)})


def test_reads_back_as_pandas_own_csv(tmp_path):
    f = frame()
    save_csv(f, tmp_path / "arrow.csv")
    f.to_csv(tmp_path / "pandas.csv", index=False)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "arrow.csv"), pd.read_csv(tmp_path / "pandas.csv"))


def test_deferred_writes_are_whole_when_the_block_ends(tmp_path):
    frames = {f"t{i}.csv": frame(20_000 + i) for i in range(3)}
    with deferred_writes():
        for name, f in frames.items():
            save_csv(f, tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(frames)  # no .part left
    for name, f in frames.items():
        assert len(pd.read_csv(tmp_path / name)) == len(f)


def figure():
    fig, axes = plt.subplots(1, 2, figsize=(6, 3))
    for ax in axes:
        ax.plot(np.arange(10), np.random.default_rng(0).random(10))
        ax.set_title("mean |γ| by layer, a long title")
    fig.suptitle("a title")
    fig.legend(["BN-only"], loc="center left", bbox_to_anchor=(1.0, 0.5))  # outside: the crop must grow
    return fig


@pytest.mark.parametrize("dpi", [None, 200])
def test_images_are_cropped_as_savefig_tight_crops_them(tmp_path, dpi):
    fig = figure()
    fig.savefig(tmp_path / "want.png", bbox_inches="tight", **({"dpi": dpi} if dpi else {}))
    plt.close(fig)
    png, pdf = save(figure(), tmp_path, "got", dpi=dpi)
    want, got = np.asarray(Image.open(tmp_path / "want.png")), np.asarray(Image.open(png))
    assert want.shape == got.shape and np.array_equal(want, got)
    assert pdf.read_bytes().startswith(b"%PDF")
