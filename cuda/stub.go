//go:build !cuda

package cuda

import "carryon/tensor"

// Available reports whether this binary was built with CUDA support.
const Available = false

// Device is a GPU; in a build without the cuda tag none can be opened.
type Device struct{}

// New opens GPU ordinal; without the cuda tag it always fails with ErrNotBuilt.
func New(ordinal int) (*Device, error) { return nil, ErrNotBuilt }

// Info describes the device.
func (d *Device) Info() Info { return Info{} }

// Close releases the device.
func (d *Device) Close() error { return nil }

// OpenBackend opens GPU ordinal as a tensor.Backend; without the cuda tag
// it always fails with ErrNotBuilt.
func OpenBackend(ordinal int) (tensor.Backend, func() error, error) { return nil, nil, ErrNotBuilt }
