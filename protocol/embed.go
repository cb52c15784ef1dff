package protocol

import (
	"fmt"
	"slices"
)

// EmbedRequest asks a node to run a base's forward pass over a chunk of
// token sequences and return the bridged hidden states of some layers.
type EmbedRequest struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// JobID names the coordinator's job: lowercase hex, 1..64 characters.
	JobID string `msgpack:"job"`
	// ChunkID is the lowercase hex SHA-256 (64 characters) of the chunk's
	// tokens; results are bound to it.
	ChunkID string `msgpack:"chunk"`
	// BaseHash is the BaseInfo.WeightsHash (64 hex characters) of the base
	// to run: model.Base.EmbedHash, its weights and numerics.
	BaseHash string `msgpack:"base"`
	// Layers are the hidden states wanted, 1..MaxLayersPerRequest distinct
	// entries: -1 = the final hidden state after the final norm (the LM
	// head's input); k >= 0 = the residual stream after k blocks (0 = the
	// token embeddings), k <= MaxModelLayers.
	Layers []int `msgpack:"layers"`
	// Codec is the bridge setting to compress with ("q8", "q4", "bf16"),
	// an identifier of 1..64 characters.
	Codec string `msgpack:"codec"`
	// Seqs are the token sequences, 1..MaxSeqsPerChunk of them, each of
	// 1..MaxSeqLen token IDs in [0, MaxVocab), MaxTokensPerChunk in all.
	Seqs [][]int32 `msgpack:"seqs"`
}

func (*EmbedRequest) Type() MsgType    { return TypeEmbedRequest }
func (m *EmbedRequest) version() uint8 { return m.V }

func (m *EmbedRequest) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("JobID", m.JobID, 0),
		checkHex("ChunkID", m.ChunkID, 64),
		checkHex("BaseHash", m.BaseHash, 64),
		checkLayers(m.Layers),
		checkIdent("Codec", m.Codec),
		checkSeqs(m.Seqs),
	)
}

func checkLayers(layers []int) error {
	var before []int
	return checkList("Layers", layers, 1, MaxLayersPerRequest, func(f string, l int) error {
		if err := checkLayer(f, l); err != nil {
			return err
		}
		if slices.Contains(before, l) {
			return fmt.Errorf("%s: %d is repeated", f, l)
		}
		before = append(before, l)
		return nil
	})
}

func checkSeqs(seqs [][]int32) error {
	total := 0
	err := checkList("Seqs", seqs, 1, MaxSeqsPerChunk, func(f string, s []int32) error {
		if err := checkRange("len("+f+")", len(s), 1, MaxSeqLen); err != nil {
			return err
		}
		total += len(s)
		for j, tok := range s {
			if tok < 0 || tok >= MaxVocab {
				return fmt.Errorf("%s[%d]: token %d out of range [0, %d)", f, j, tok, MaxVocab)
			}
		}
		return nil
	})
	if err == nil && total > MaxTokensPerChunk {
		err = fmt.Errorf("Seqs: %d tokens in all, max %d", total, MaxTokensPerChunk)
	}
	return err
}

// Tokens returns the total number of tokens in the request.
func (m *EmbedRequest) Tokens() int {
	n := 0
	for _, s := range m.Seqs {
		n += len(s)
	}
	return n
}

// EmbedResult carries the bridged hidden states of one layer of one
// sequence of an EmbedRequest: Rows×Dim values compressed by Codec.
type EmbedResult struct {
	V       uint8  `msgpack:"v"`     // message version, >= 1
	JobID   string `msgpack:"job"`   // the request's JobID
	ChunkID string `msgpack:"chunk"` // the request's ChunkID
	// Seq indexes the request's Seqs, 0..MaxSeqsPerChunk-1.
	Seq int `msgpack:"seq"`
	// Layer is one of the request's Layers (-1 = final after the norm).
	Layer int `msgpack:"layer"`
	// Codec is the bridge setting Data is encoded with (the request's).
	Codec string `msgpack:"codec"`
	// Rows is the number of token positions, 1..MaxSeqLen (the length of
	// Seqs[Seq]).
	Rows int `msgpack:"rows"`
	// Dim is the hidden width D of the rows, 1..MaxHiddenDim.
	Dim int `msgpack:"dim"`
	// Data is the codec's payload for the Rows×Dim matrix (row-major), for
	// k-bit codecs per-row scales and ceil(Dim·bits/8) packed bytes per row.
	// Its exact size is the codec's to check; here it must be non-empty, at
	// most MaxResultData bytes and at most Rows·(4·Dim+64) bytes (no codec is
	// larger than float32 plus a per-row header).
	Data []byte `msgpack:"data"`
}

func (*EmbedResult) Type() MsgType    { return TypeEmbedResult }
func (m *EmbedResult) version() uint8 { return m.V }

func (m *EmbedResult) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("JobID", m.JobID, 0),
		checkHex("ChunkID", m.ChunkID, 64),
		checkRange("Seq", m.Seq, 0, MaxSeqsPerChunk-1),
		checkLayer("Layer", m.Layer),
		checkIdent("Codec", m.Codec),
		checkRange("Rows", m.Rows, 1, MaxSeqLen),
		checkRange("Dim", m.Dim, 1, MaxHiddenDim),
		// Rows and Dim are in range when this is the first error.
		checkRange("len(Data)", len(m.Data), 1, min(MaxResultData, m.Rows*(4*m.Dim+64))),
	)
}

// EmbedDone ends a node's answer to an EmbedRequest.
type EmbedDone struct {
	V       uint8  `msgpack:"v"`     // message version, >= 1
	JobID   string `msgpack:"job"`   // the request's JobID
	ChunkID string `msgpack:"chunk"` // the request's ChunkID
	// Results is the number of EmbedResult frames sent before this one,
	// 0..MaxSeqsPerChunk·MaxLayersPerRequest; the receiver checks it
	// against what it read.
	Results int `msgpack:"results"`
	// ComputeMillis is the node's compute time for the chunk in
	// milliseconds, >= 0 (for throughput-weighted assignment).
	ComputeMillis int64 `msgpack:"compute_ms"`
}

func (*EmbedDone) Type() MsgType    { return TypeEmbedDone }
func (m *EmbedDone) version() uint8 { return m.V }

func (m *EmbedDone) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("JobID", m.JobID, 0),
		checkHex("ChunkID", m.ChunkID, 64),
		checkRange("Results", m.Results, 0, MaxSeqsPerChunk*MaxLayersPerRequest),
		checkRange("ComputeMillis", m.ComputeMillis, 0, 1<<50),
	)
}

// Ack is the receiver's explicit acknowledgement that ends a transfer: the
// coordinator's answer to EmbedDone.
// Until it is read, a transfer has not happened.
type Ack struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// JobID and ChunkID repeat the job's (lowercase hex).
	JobID   string `msgpack:"job"`
	ChunkID string `msgpack:"chunk"`
	// OK is true when the receiver accepted the transfer.
	OK bool `msgpack:"ok"`
	// Reason says why not when OK is false; free text, at most 1024 bytes.
	Reason string `msgpack:"reason"`
	// Held (v2) is true when the coordinator accepted an embedding result
	// but holds it only in memory, awaiting a second opinion: the node
	// keeps the result and offers it again (OfferProtocol) after a
	// reconnect. OK without Held means the result is durable.
	Held bool `msgpack:"held,omitempty"`
}

func (*Ack) Type() MsgType    { return TypeAck }
func (m *Ack) version() uint8 { return m.V }

func (m *Ack) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkOptHex("JobID", m.JobID, 0),
		checkOptHex("ChunkID", m.ChunkID, 64),
		checkText("Reason", m.Reason, maxTextLen, false),
	)
}
