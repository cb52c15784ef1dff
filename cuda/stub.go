//go:build !cuda

package cuda

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
