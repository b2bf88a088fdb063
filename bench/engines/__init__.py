"""The pieces of bench/bench_engines.py, by concern (the entry point is bench/bench_engines.py):

  workloads.py  workload definitions, model building and caching (weights, inputs, ONNX), GFLOP counting
  runners.py    the per-engine child code (libdiffusion, torch, onnxruntime, openvino) and the timing loop
  report.py     pooling the rounds, the tables, the notes and the JSON

The modules import bench_unet (bench/ on sys.path: bench_engines.py puts it there).
"""
