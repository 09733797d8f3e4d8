"""Benchmark: pretraining throughput of our BertPretrainer vs HF TFBertForPreTraining, with model FLOPs utilisation.

One run, same config, same random batch, float32, the same loss (`pretraining_losses`) and AdamW for every variant:
- `ours`: the masked positions are gathered before the vocabulary projection (Google's BERT; what `moat pretrain`
  runs),
- `ours_all_positions`: our model projecting every position, the work HF's model does,
- `hf`: TFBertForPreTraining (its `prediction_logits` cover every position).
A train step is forward + backward + AdamW update; tokens/s counts input tokens (batch × sequence length).

MFU divides the achieved model FLOPs/s by a matmul peak measured in the same process: a square float32 tf.matmul,
2·n³ FLOPs per call (TF32 tensor cores count when TensorFlow enables them; the report says whether it does).
"""
from __future__ import annotations

import dataclasses
import time


import numpy as np
import tensorflow as tf

from moatkit.data.core.errors import ConfigError
from moatkit.models.bert import BertConfig, BertPretrainer, pretraining_losses


def model_flops_per_token(config: BertConfig, *, body_params: int, seq_length: int, max_predictions: int) -> float:
    """Training FLOPs per input token (forward + backward = 3 × forward, 2 FLOPs per multiply-add):

    6·N_body + 12·L·H·T + 6·(H² + H·V)·P/T
    - 6·N_body: every weight of the encoder blocks and pooler multiplies each token once (Kaplan et al. 2020);
      embedding tables are lookups, not matmuls, and are left out;
    - 12·L·H·T: attention scores QKᵀ and the weighted sum AV, 2·T·H each per token and layer, ×3 for training
      (Chowdhery et al. 2022, PaLM, appendix B);
    - the MLM head (transform H×H and the tied H×V decoder) as useful work on the P masked positions only — so
      a model that projects all T positions gets no credit for the extra work.
    """
    h, layers, vocab = config.hidden_size, config.num_layers, config.vocab_size
    return (6 * body_params + 12 * layers * h * seq_length
            + 6 * (h * h + h * vocab) * max_predictions / seq_length)


def measure_matmul_peak(*, size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a float32 (size × size) @ (size × size) matmul: 2·size³ FLOPs per call."""
    a = tf.random.normal([size, size], seed=1)
    b = tf.random.normal([size, size], seed=2)

    @tf.function
    def chain():
        x = a
        for _ in range(repeats):
            x = tf.matmul(x, b) * size ** -0.5  # unit variance: no overflow or denormals; O(n²) next to O(n³)
        return tf.reduce_sum(x[0, :1])

    chain().numpy()  # trace and warm up
    start = time.perf_counter()
    chain().numpy()
    return 2 * size ** 3 * repeats / (time.perf_counter() - start)


def _batch(config: BertConfig, *, batch_size: int, seq_length: int, max_predictions: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, config.vocab_size, [batch_size, seq_length])
    positions = np.sort(np.stack([rng.choice(np.arange(1, seq_length), max_predictions, replace=False)
                                  for _ in range(batch_size)]), axis=1)
    labels = np.take_along_axis(ids, positions, axis=1)
    all_labels = np.zeros_like(ids)
    all_weights = np.zeros(ids.shape, np.float32)
    np.put_along_axis(all_labels, positions, labels, axis=1)
    np.put_along_axis(all_weights, positions, 1.0, axis=1)
    segments = (np.arange(seq_length) >= seq_length // 2).astype(np.int32)[None].repeat(batch_size, 0)
    common = {"input_ids": tf.constant(ids, tf.int32), "input_mask": tf.ones([batch_size, seq_length], tf.int32),
              "segment_ids": tf.constant(segments), "next_sentence_labels": tf.constant(rng.integers(0, 2, batch_size),
                                                                                        tf.int32)}
    masked = {**common, "masked_lm_positions": tf.constant(positions, tf.int32),
              "masked_lm_ids": tf.constant(labels, tf.int32),
              "masked_lm_weights": tf.ones([batch_size, max_predictions], tf.float32)}
    # every position scored, the loss weighted to the same masked positions
    full = {**common, "masked_lm_ids": tf.constant(all_labels, tf.int32),
            "masked_lm_weights": tf.constant(all_weights)}
    return {"masked": masked, "full": full}


def _time_steps(step, steps: int) -> tuple[float, float]:
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss = float(loss)  # waits for the device
    return (time.perf_counter() - start) / steps, loss


def run_pretrain_bench(*, config: BertConfig | None = None, batch_size: int = 16, seq_length: int = 128,
                       max_predictions: int = 20, steps: int = 10, rounds: int = 3, matmul_size: int = 2048,
                       jit_compile: bool = False, seed: int = 0) -> dict:
    """Tokens/s and MFU of one float32 train step for ours (masked gather and all positions) vs HF; see the module
    docstring. Defaults: a 4-layer 256-wide BERT with the 30,522 vocabulary.

    The variants are timed in turn, `rounds` times `steps` steps each, and the best round counts (the matmul peak
    too): on a shared machine a load spike then hits all of them alike instead of whichever ran during it."""
    from transformers import TFBertForPreTraining

    config = config or BertConfig()
    config = dataclasses.replace(config, max_position_embeddings=max(config.max_position_embeddings, seq_length))
    if tf.keras.mixed_precision.global_policy().name != "float32":
        raise ConfigError(f"run_pretrain_bench measures float32, the global policy is "
                          f"{tf.keras.mixed_precision.global_policy().name}", fix="call set_precision('float32') first")
    if not 0 < max_predictions < seq_length:
        raise ConfigError(f"max_predictions={max_predictions} must be in [1, seq_length)", fix="e.g. 20 for 128")
    batches = _batch(config, batch_size=batch_size, seq_length=seq_length, max_predictions=max_predictions, seed=seed)
    result = {"config": dataclasses.asdict(config), "batch_size": batch_size, "seq_length": seq_length,
              "max_predictions": max_predictions, "steps": steps, "precision": "float32", "jit_compile": jit_compile,
              "device": (tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU"))[0].name,
              "tf32": bool(tf.config.experimental.tensor_float_32_execution_enabled()),
              "rounds": rounds, "matmul_size": matmul_size}

    tf.keras.utils.set_random_seed(seed)
    ours = BertPretrainer(config).build_weights()
    body = ours.encoder.transformer.blocks + [ours.encoder.pooler]
    body_params = int(sum(np.prod(w.shape) for layer in body for w in layer.trainable_weights))
    flops = model_flops_per_token(config, body_params=body_params, seq_length=seq_length,
                                  max_predictions=max_predictions)
    result.update(body_params=body_params, flops_per_token=round(flops),
                  flops_formula="6*N_body + 12*L*H*T + 6*(H^2 + H*V)*P/T")
    tf.keras.utils.set_random_seed(seed)
    hf = TFBertForPreTraining(config.to_hf())
    hf(hf.dummy_inputs, training=False)

    def hf_outputs(features, training):
        out = hf(input_ids=features["input_ids"], attention_mask=features["input_mask"],
                 token_type_ids=features["segment_ids"], training=training)
        return {"mlm_logits": out.prediction_logits, "sentence_logits": out.seq_relationship_logits}

    def ours_all(features, training):
        return ours({k: v for k, v in features.items() if k != "masked_lm_positions"}, training=training)

    variants = (("ours", ours, batches["masked"], ours), ("ours_all_positions", ours, batches["full"], ours_all),
                ("hf", hf, batches["full"], hf_outputs))  # the two "ours" share weights: both train one model

    def make_step(model, features, forward):
        optimizer = tf.keras.optimizers.AdamW(learning_rate=1e-4, weight_decay=0.01)

        @tf.function(jit_compile=jit_compile)
        def step():
            with tf.GradientTape() as tape:
                loss = pretraining_losses(forward(features, training=True), features)["loss"]
            optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
            return loss

        float(step())  # trace, build the optimizer slots, warm up
        return step

    train_steps = {name: make_step(*args) for name, *args in variants}
    best = {name: (float("inf"), 0.0) for name in train_steps}
    peak = 0.0
    for _ in range(rounds):
        peak = max(peak, measure_matmul_peak(size=matmul_size))
        for name, step in train_steps.items():
            seconds, loss = _time_steps(step, steps)
            best[name] = (min(best[name][0], seconds), loss)
    result["matmul_peak_tflops"] = round(peak / 1e12, 4)
    for name, (seconds, loss) in best.items():
        tokens = batch_size * seq_length / seconds
        result[name] = {"step_ms": round(seconds * 1e3, 2), "tokens_per_second": round(tokens, 1),
                        "mfu": round(tokens * flops / peak, 4), "final_loss": round(loss, 4)}
    result["ratio_tokens_per_second_ours_vs_hf"] = round(result["ours"]["tokens_per_second"]
                                                         / result["hf"]["tokens_per_second"], 3)
    result["ratio_all_positions_vs_hf"] = round(result["ours_all_positions"]["tokens_per_second"]
                                                / result["hf"]["tokens_per_second"], 3)
    return result


def markdown_table(result: dict) -> str:
    c = result["config"]
    lines = [f"BERT pretraining step, float32, {c['num_layers']}L/{c['hidden_size']}H/V={c['vocab_size']}, batch "
             f"{result['batch_size']} × {result['seq_length']} tokens, {result['max_predictions']} masked, "
             f"{result['device']}; matmul peak {result['matmul_peak_tflops']} TFLOP/s",
             "", "| model | step ms | tokens/s | MFU |", "|---|---:|---:|---:|"]
    for name in ("ours", "ours_all_positions", "hf"):
        r = result[name]
        lines.append(f"| {name} | {r['step_ms']} | {r['tokens_per_second']} | {r['mfu']:.1%} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(description="BERT pretraining throughput: ours vs HF TFBertForPreTraining")
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=30522)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--jit", action="store_true", help="XLA-compile the train steps")
    args = parser.parse_args()
    bench = run_pretrain_bench(config=BertConfig(vocab_size=args.vocab, hidden_size=args.hidden,
                                                 num_layers=args.layers, num_heads=args.heads,
                                                 intermediate_size=4 * args.hidden),
                               batch_size=args.batch, seq_length=args.length, steps=args.steps, jit_compile=args.jit)
    print(json.dumps(bench, indent=1))
    print(markdown_table(bench))
