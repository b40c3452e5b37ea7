"""Kernel tests. CPU checks run the Triton kernels under Triton's interpreter in a subprocess
(test_interpreter.py runs the interp_*.py files with TRITON_INTERPRET=1): Triton reads that variable
when its own library and our kernels are imported, so it must be set before any `import triton` and
must not leak into this process's other tests. GPU checks (test_gpu.py) need CUDA."""
