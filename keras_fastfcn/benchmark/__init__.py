"""Speed, FLOPs, parameters and training memory: JPU vs DilatedFCN (`keras-fastfcn benchmark`).

The measurements live here, out of the library's core (nothing but the `benchmark`
command imports this package): `cpu` (this CPU and its peaks), `configs` (the models
timed), `timing` (one configuration in this process), `torch_anchor` (the official
PyTorch structure, `torch_reference`, timed in the same run) and `run` (a whole run,
its ratios and results file). `benchmarks/report.py` merges a run's `results.json`
into its machine kind's file in `benchmarks/results/` and renders `RESULTS.md` and
`chart.png` from those files.

Every configuration (head x encoder x upsampler) runs in its own child process, so
one model's memory and thread pools do not bias the next; all run on the same input.

- Latency: the inference model (logits only) on one 512x512 image, through the
  fastest path the package offers, the one `keras-fastfcn predict` / `evaluate` run:
  BatchNorm folded into the convolutions (`keras_fastfcn.inference.fold`) and a
  `tf.function` (`keras_fastfcn.inference.trace`; with `freeze` / `--freeze` the
  weights frozen into its graph, as `predict --freeze` runs it), without XLA and with
  XLA for every part but the JPU (`keras_fastfcn.inference.xla_parts`; for a dilated
  model that is nearly the whole graph; under bf16 / fp16 only the float32 logits
  resize), the faster kept (`xla="auto"`; `"off"` / `"parts"` time one of the two:
  half the tracing). The random models get trained-like BatchNorm statistics
  (`_trained_like_normalization`). Protocol of the official `test_fps_params.py`
  (warm-up runs, then repeated timed runs), reported as the median latency and its FPS. (The official
  script times the training model with its auxiliary head; we time what is deployed.)
- Precision (`precisions`): `fp32`, or the model rebuilt under Keras' mixed-precision
  policy (`bf16`: `mixed_bfloat16`, `fp16`: `mixed_float16`) with the same weights
  (`keras_fastfcn.precision.with_precision`), then folded and timed the same way.
  `int8` (`measure_int8_speed`): TensorFlow has no int8 kernels for these graphs, so the
  model is exported as `keras-fastfcn export --precision int8` writes it (static
  post-training quantization, the exporters' default float set) to TFLite and to ONNX
  and timed in TFLite's interpreter and ONNX Runtime through
  `keras_fastfcn.serving.runtime.ExportPredictor`, the faster runtime kept
  (`int8_runtime="auto"`). Calibration: a few random images, since the speed of a
  quantized graph does not depend on its scales; int8 accuracy on real data is
  `benchmarks/precision.py`'s job. The exports output the class map, so int8 rows also
  time the argmax (about 1 ms at 512x512) that the logits-only Keras rows leave out.
- Throughput: images/s of the same function at batch `throughput_batch` (8), median of
  repeated runs after a warm-up (0 turns it off).
- FLOPs: TensorFlow's graph profiler on the frozen fp32 inference graph (a multiply-add
  counts 2); the same count at every precision.
- Achieved GFLOP/s (FLOPs / batch-1 latency, and at the throughput batch) against this
  CPU's peak for the precision (`peak_gflops`): cores x clock x FLOP/cycle/core, the
  FLOP/cycle/core from the microarchitecture's row of `cpu.MICROARCHITECTURES` (vendor,
  family, model; the ISA flags for an unknown CPU), the clock its boost clock where the
  machine reports only the nominal one (`flops_per_cycle`, `peak_clock`).
- Anchor: where PyTorch is installed, the official module structure
  (`keras_fastfcn.benchmark.torch_reference`: deep-stem ResNet, same head and JPU / dilated
  OS8, random weights, a normalized random image) timed in the same run, same size,
  batch 1, same protocol, eval mode under `torch.inference_mode`,
  `torch.set_num_threads` = the cores TensorFlow uses; fp32, and
  `torch.autocast("cpu", dtype=torch.bfloat16)` for the bf16 rows where the CPU has bf16
  hardware (`torch_anchor_available`).
- Parameters: encoder, upsampler (JPU / JPU_X) and head, as `test_fps_params.py`.
- Memory: peak resident memory (VmHWM) of a child process that runs one training step
  (SGD, main + auxiliary + SE losses as in training) at crop 480, batch 2; also the
  growth during the step (peak minus the resident size just before it).
"""

from keras_fastfcn.benchmark.configs import (ENCODERS, HEADS, UPSAMPLERS, _build, _deployed,
                                             _trained_like_normalization, frozen_forward)
from keras_fastfcn.benchmark.cpu import (BENCHMARK_PRECISIONS, cpu_info, flops_per_cycle,
                                         machine_description, peak_gflops)
from keras_fastfcn.benchmark.run import (previous_results, ratios, row_precision,
                                         run_benchmarks, runtime_notes, upgrade_results,
                                         write_results)
from keras_fastfcn.benchmark.timing import (INT8_CALIBRATION_IMAGES, INT8_RUNTIMES,
                                            RUNTIME_NAMES, XLA_CHOICES, measure_int8_speed,
                                            measure_speed, measure_train_memory)
from keras_fastfcn.benchmark.torch_anchor import (TORCH_ENCODERS, TORCH_PRECISIONS,
                                                  TORCH_UPSAMPLERS, measure_torch,
                                                  torch_anchor_available, torch_reference_path)

__all__ = ["ENCODERS", "BENCHMARK_PRECISIONS", "HEADS", "INT8_CALIBRATION_IMAGES",
           "INT8_RUNTIMES", "RUNTIME_NAMES", "TORCH_ENCODERS", "TORCH_PRECISIONS",
           "TORCH_UPSAMPLERS", "UPSAMPLERS", "XLA_CHOICES", "cpu_info", "flops_per_cycle",
           "frozen_forward", "machine_description", "measure_int8_speed", "measure_speed",
           "measure_torch", "measure_train_memory", "peak_gflops", "previous_results",
           "ratios", "row_precision", "run_benchmarks", "runtime_notes",
           "torch_anchor_available", "torch_reference_path", "upgrade_results",
           "write_results"]
