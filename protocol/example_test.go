package protocol_test

import (
	"bytes"
	"errors"
	"fmt"

	"carryon/protocol"
)

func Example() {
	var stream bytes.Buffer // stands in for a libp2p stream
	protocol.WriteFrame(&stream, &protocol.EmbedDone{V: protocol.Version, JobID: "2a",
		ChunkID: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08", Results: 2, ComputeMillis: 40})
	protocol.WriteFrame(&stream, protocol.Errorf(protocol.KindOverloaded, "no free slot"))

	done, err := protocol.ReadExpect[*protocol.EmbedDone](&stream)
	fmt.Println(done.Type(), done.Results, err)

	_, err = protocol.ReadExpect[*protocol.EmbedDone](&stream)
	var remote *protocol.Error
	fmt.Println(errors.As(err, &remote), protocol.KindOf(err) == protocol.KindOverloaded, err)
	// Output:
	// EmbedDone 2 <nil>
	// true true remote error (overloaded): no free slot
}
