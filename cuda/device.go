//go:build cuda

package cuda

import (
	"errors"
	"fmt"
	"runtime"
	"sync"

	"gorgonia.org/cu"
)

// Available reports whether this binary was built with CUDA support.
const Available = true

// Device owns one CUDA context on one locked OS thread (see the package
// comment for the thread rule).
type Device struct {
	info      Info
	work      chan func(cu.CUContext)
	quit      chan struct{} // closed by Close
	done      chan struct{} // closed when the owner goroutine has returned
	closeOnce sync.Once
}

// New opens GPU ordinal and starts its owner goroutine.
func New(ordinal int) (*Device, error) {
	d := &Device{work: make(chan func(cu.CUContext)), quit: make(chan struct{}), done: make(chan struct{})}
	ready := make(chan error, 1)
	go d.run(ordinal, ready)
	if err := <-ready; err != nil {
		return nil, err
	}
	return d, nil
}

func (d *Device) run(ordinal int, ready chan<- error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	defer close(d.done)
	ctx, err := openContext(ordinal, &d.info)
	ready <- err
	if err != nil {
		return
	}
	defer ctx.Destroy()
	for {
		select {
		case f := <-d.work:
			f(ctx)
		case <-d.quit:
			return
		}
	}
}

// openContext creates a context bound to the calling (locked) thread and
// converts cu's panics into errors.
func openContext(ordinal int, info *Info) (ctx cu.CUContext, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("cuda.New: %v", r)
		}
	}()
	n, err := cu.NumDevices()
	if err != nil {
		return ctx, fmt.Errorf("cuda.New: %w", err)
	}
	if ordinal < 0 || ordinal >= n {
		return ctx, ErrNoDevice
	}
	dev := cu.Device(ordinal)
	name, err := dev.Name()
	if err != nil {
		return ctx, fmt.Errorf("cuda.New: device name: %w", err)
	}
	mem, err := dev.TotalMem()
	if err != nil {
		return ctx, fmt.Errorf("cuda.New: device memory: %w", err)
	}
	*info = Info{Name: name, MemoryBytes: mem, Ordinal: ordinal}
	ctx, err = dev.MakeContext(cu.SchedAuto)
	if err != nil {
		return ctx, fmt.Errorf("cuda.New: create context: %w", err)
	}
	return ctx, nil
}

// Do runs f on the device goroutine and returns its error; panics inside f
// become errors.
func (d *Device) Do(f func(cu.CUContext) error) (err error) {
	res := make(chan error, 1)
	select {
	case d.work <- func(ctx cu.CUContext) {
		defer func() {
			if r := recover(); r != nil {
				res <- fmt.Errorf("cuda: %v", r)
			}
		}()
		res <- f(ctx)
	}:
	case <-d.done:
		return errors.New("cuda: device closed")
	}
	return <-res
}

// Info describes the device.
func (d *Device) Info() Info { return d.info }

// Close stops the owner goroutine and destroys the context; later calls
// of Do return an error. Close is idempotent.
func (d *Device) Close() error {
	d.closeOnce.Do(func() { close(d.quit) })
	<-d.done
	return nil
}
