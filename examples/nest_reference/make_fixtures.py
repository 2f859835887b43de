"""Draws the fixtures of NEST's e-prop tests with numpy's legacy generator.

The procedures are those of `test_eprop_regression` and `test_eprop_classification` in
NEST's `testsuite/pytests/test_eprop_bsshslm_2020_plasticity.py`: the same calls, in the
same order, from `np.random.seed(SEED)`. The weights are drawn as float32, as NEST's tests
cast them, and stored widened to float64.

    python3 make_fixtures.py --task regression [--seed 1] [--out FILE]
    python3 make_fixtures.py --task classification --batch 2 [--seed 1] [--out FILE]

Tensors (all float64): w_in [n_rec, n_in], w_rec [n_rec, n_rec], w_out [n_out, n_rec],
b_fb [n_rec, n_out], x [n_iter, batch, T, n_in], and y [n_iter, batch, T, n_out]
(regression) or labels [n_iter, batch] (classification). In the classification task the
first 50 recurrent neurons are LIF, the last 50 ALIF, as in NEST's test.
"""

import argparse
import json
import struct

import numpy as np


def regression(seed):
    np.random.seed(seed)
    n_in, n_rec, n_out, steps, n_iter, batch = 100, 100, 1, 1000, 5, 1
    f32 = np.float32
    w_in = np.array(np.random.randn(n_in, n_rec).T / np.sqrt(n_in), dtype=f32)
    w_rec = np.array(np.random.randn(n_rec, n_rec).T / np.sqrt(n_rec), dtype=f32)
    np.fill_diagonal(w_rec, 0.0)
    w_out = np.array(np.random.randn(n_rec, n_out).T / np.sqrt(n_rec), dtype=f32)
    b_fb = np.array(np.random.randn(n_rec, n_out) / np.sqrt(n_rec), dtype=f32)
    spikes = (np.random.rand(steps, n_in) < 0.05).swapaxes(0, 1)
    spikes[:, 0] = 0
    periods = [1000, 500, 333, 200]
    amplitudes = np.random.uniform(low=0.5, high=2.0, size=len(periods))
    phases = np.random.uniform(low=0.0, high=2.0 * np.pi, size=len(periods))
    target = sum(
        a * np.sin(np.linspace(p, p + 2.0 * np.pi * (steps // period), steps))
        for a, p, period in zip(amplitudes, phases, periods)
    )
    target -= target[0]
    target /= max(np.abs(target).max(), 1e-6)
    # The same sequence at every iteration, as NEST's test tiles it.
    x = np.broadcast_to(spikes.T.astype(np.float64), (n_iter, batch, steps, n_in))
    y = np.broadcast_to(target[:, None], (n_iter, batch, steps, n_out))
    return {
        "w_in": w_in,
        "w_rec": w_rec,
        "w_out": w_out,
        "b_fb": b_fb,
        "x": x,
        "y": y,
    }


def classification(seed, batch):
    np.random.seed(seed)
    n_iter = 5
    n_symbols, n_cues, prob_group, spike_prob = 4, 7, 0.3, 0.04
    cue, spacing, bg_noise, recall = 100, 50, 1050, 150
    steps = n_cues * (cue + spacing) + bg_noise + recall
    n_in, n_rec, n_out = 40, 100, 2
    f32 = np.float32

    def glorot(fan_in, fan_out):
        scale = 1.0 / max(1.0, (fan_in + fan_out) / 2.0)
        limit = np.sqrt(3.0 * scale)
        return np.random.uniform(low=-limit, high=limit, size=(fan_in, fan_out))

    w_in = np.array(np.random.randn(n_in, n_rec).T / np.sqrt(n_in), dtype=f32)
    w_rec = np.array(np.random.randn(n_rec, n_rec).T / np.sqrt(n_rec), dtype=f32)
    np.fill_diagonal(w_rec, 0.0)
    w_out = np.array(glorot(n_rec, n_out).T, dtype=f32)
    b_fb = np.array(np.random.randn(n_rec, n_out), dtype=f32)

    def sequences():
        n_pop = n_in // n_symbols
        choices = np.array([prob_group, 1 - prob_group], dtype=np.float32)
        idx = np.random.choice([0, 1], batch)
        probs = np.zeros((batch, 2), dtype=np.float32)
        probs[:, 0] = choices[idx]
        probs[:, 1] = choices[1 - idx]
        cues = np.zeros((batch, n_cues), dtype=int)
        for b in range(batch):
            cues[b, :] = np.random.choice([0, 1], n_cues, p=probs[b])
        p_in = np.zeros((batch, steps, n_in))
        for b in range(batch):
            for c in range(n_cues):
                start = c * (cue + spacing) + spacing
                side = cues[b, c]
                p_in[b, start : start + cue, side * n_pop : (side + 1) * n_pop] = spike_prob
        p_in[:, -recall:, 2 * n_pop : 3 * n_pop] = spike_prob
        p_in[:, :, 3 * n_pop :] = spike_prob / 4.0
        spikes = p_in > np.random.rand(p_in.size).reshape(p_in.shape)
        spikes[:, 0, :] = 0
        labels = (np.sum(cues, axis=1) > int(n_cues / 2)).astype(int)
        return spikes.astype(np.float64), labels

    drawn = [sequences() for _ in range(n_iter)]
    return {
        "w_in": w_in,
        "w_rec": w_rec,
        "w_out": w_out,
        "b_fb": b_fb,
        "x": np.array([d[0] for d in drawn]),
        "labels": np.array([d[1] for d in drawn], dtype=np.float64),
    }


def write_safetensors(path, tensors, metadata):
    header = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        data = np.ascontiguousarray(tensors[name], dtype="<f8").tobytes()
        header[name] = {
            "dtype": "F64",
            "shape": list(np.shape(tensors[name])),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--task", choices=["regression", "classification"], default="regression")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=1, help="classification only")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.task == "regression":
        out = args.out or f"regression_seed{args.seed}.safetensors"
        tensors = regression(args.seed)
    else:
        out = args.out or f"classification_batch{args.batch}_seed{args.seed}.safetensors"
        tensors = classification(args.seed, args.batch)
    write_safetensors(out, tensors, {"task": args.task, "seed": str(args.seed)})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
