// Stack corpus: Go. main starts 2 goroutines, each spinning through
// go_outer -> go_middle -> go_spin (//go:noinline keeps every frame), and
// sleeps argv[1] milliseconds (default 5000), then exits. A goroutine's
// stack ends in runtime.goexit (below main.go_outer); the main goroutine's
// in runtime.main -> runtime.goexit; the runtime's own threads end in
// runtime.clone (sysmon: ... runtime.mstart -> runtime.clone) or, on an
// M's g0 stack, in runtime.mcall or runtime.mstart. Go 1.19 keeps frame
// pointers and writes .debug_frame (not .eh_frame); gdb lists one more
// frame, pc 0, past each of those outermost frames.
//
// Build: GOCACHE=/tmp/hostprof-gocache go build -o stacks_go stacks_go.go
// Naming the file (not the directory) needs no go.mod and stamps no VCS
// information; GOCACHE is the only variable needed, when HOME is unset
// (the default cache is $HOME/.cache/go-build) or not writable.
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync/atomic"
	"time"
)

var sink uint64
var stop int32

//go:noinline
func go_spin(seed uint64) uint64 {
	acc := seed
	for i := uint64(0); i < 200000; i++ {
		acc += (acc*2862933555777941757 + 3037000493) ^ i
		acc = (acc << 7) | (acc >> 57)
	}
	return acc
}

//go:noinline
func go_middle(seed uint64) uint64 {
	return go_spin(seed) + 1
}

var seeds uint64
var done = make(chan uint64)

// go_outer takes no arguments: `go f(x)` would run f under a closure
// (main.main.func1) since Go 1.17.
//
//go:noinline
func go_outer() {
	acc := atomic.AddUint64(&seeds, 1)
	for atomic.LoadInt32(&stop) == 0 {
		acc = go_middle(acc)
	}
	done <- acc
}

func main() {
	runMs := 5000.0
	if len(os.Args) > 1 {
		if v, err := strconv.ParseFloat(os.Args[1], 64); err == nil {
			runMs = v
		}
	}
	for i := 0; i < 2; i++ {
		go go_outer()
	}
	time.Sleep(time.Duration(runMs * float64(time.Millisecond)))
	atomic.StoreInt32(&stop, 1)
	for i := 0; i < 2; i++ {
		sink ^= <-done
	}
	if len(os.Args) > 2 {
		fmt.Println(sink)
	}
}
