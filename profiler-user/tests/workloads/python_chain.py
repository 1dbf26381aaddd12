"""A CPython workload whose stacks are known, for hostprof's Python frames.

`python_chain.py MS threads`, for MS milliseconds:
  - the main thread: outer -> middle -> inner_hot (a loop);
  - a thread: threading's bootstrap -> thread_worker -> thread_leaf.
`python_chain.py MS sort`: call_qsort -> libc qsort (through ctypes) ->
  the ctypes callback -> compare: Python -> C -> Python (a process of its
  own: a callback takes the GIL back at each call, which would starve
  or be starved by other threads).
The e2e test checks the lines the frames are at against the markers
"# line:NAME" below, so keep each marker on the line it names.
"""

import ctypes
import sys
import threading
import time


def inner_hot(n):
    total = 0
    for i in range(n):  # line:inner_loop
        total += i * i % 7  # line:inner_body
    return total


def middle(n):
    return inner_hot(n)  # line:middle_call


def outer(deadline):
    while time.monotonic() < deadline:
        middle(20000)  # line:outer_call


def thread_leaf(n):
    total = 0
    for i in range(n):  # line:leaf_loop
        total ^= i * 3  # line:leaf_body
    return total


def thread_worker(deadline):
    while time.monotonic() < deadline:
        thread_leaf(20000)  # line:worker_call


LIBC = ctypes.CDLL(None)
LIBC.qsort.restype = None
COMPARE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_int))


def compare(a, b):
    spin = 0
    for i in range(3000):  # line:compare_loop
        spin += i  # line:compare_body
    return a[0] - b[0]


C_COMPARE = COMPARE(compare)


def call_qsort(deadline):
    values = (ctypes.c_int * 3)()
    while time.monotonic() < deadline:
        for i in range(3):
            values[i] = 3 - i
        LIBC.qsort(values, 3, ctypes.sizeof(ctypes.c_int), C_COMPARE)  # line:qsort_call


def main():
    deadline = time.monotonic() + float(sys.argv[1]) / 1000
    if sys.argv[2] == "sort":
        print("started", flush=True)
        call_qsort(deadline)  # line:sort_call
        return
    worker = threading.Thread(target=thread_worker, args=(deadline,), name="worker")
    worker.start()
    print("started", flush=True)
    outer(deadline)  # line:main_call
    worker.join()


if __name__ == "__main__":
    main()  # line:module_call
