package protocol

import "fmt"

// BlobRequest asks the stream's other end for a blob by CID.
type BlobRequest struct {
	V   uint8  `msgpack:"v"`   // message version, >= 1
	CID string `msgpack:"cid"` // CIDv1 raw sha2-256 of the blob wanted
}

func (*BlobRequest) Type() MsgType    { return TypeBlobRequest }
func (m *BlobRequest) version() uint8 { return m.V }

func (m *BlobRequest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	return checkCIDField("CID", m.CID)
}

// BlobManifest announces the chunks that follow, so the fetcher can check
// the size before allocating and every chunk as it arrives.
type BlobManifest struct {
	V   uint8  `msgpack:"v"`   // message version, >= 1
	CID string `msgpack:"cid"` // the requested CID
	// Size is the blob's length in bytes, 0..MaxBlobBytes.
	Size int64 `msgpack:"size"`
	// ChunkSize is the length of every chunk but the last, 1..MaxBlobChunk.
	ChunkSize int `msgpack:"chunk_size"`
	// Chunks are the SHA-256 digests (32 bytes each) of the chunks in
	// order; there are exactly ceil(Size/ChunkSize) of them, at most
	// MaxBlobChunks.
	Chunks [][]byte `msgpack:"chunks"`
}

func (*BlobManifest) Type() MsgType    { return TypeBlobManifest }
func (m *BlobManifest) version() uint8 { return m.V }

func (m *BlobManifest) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if err := checkCIDField("CID", m.CID); err != nil {
		return err
	}
	if err := checkRange("Size", m.Size, 0, MaxBlobBytes); err != nil {
		return err
	}
	if err := checkRange("ChunkSize", m.ChunkSize, 1, MaxBlobChunk); err != nil {
		return err
	}
	want := (m.Size + int64(m.ChunkSize) - 1) / int64(m.ChunkSize)
	if want > MaxBlobChunks {
		return fmt.Errorf("ChunkSize: %d bytes makes %d chunks of a %d-byte blob, max %d", m.ChunkSize, want, m.Size, MaxBlobChunks)
	}
	if int64(len(m.Chunks)) != want {
		return fmt.Errorf("len(Chunks): %d, want ceil(Size/ChunkSize) = %d", len(m.Chunks), want)
	}
	for i, h := range m.Chunks {
		if len(h) != 32 {
			return fmt.Errorf("Chunks[%d]: %d bytes, want a 32-byte SHA-256", i, len(h))
		}
	}
	return nil
}

// ChunkLen returns the length of chunk i (the last may be shorter).
func (m *BlobManifest) ChunkLen(i int) int {
	off := int64(i) * int64(m.ChunkSize)
	return int(min(int64(m.ChunkSize), m.Size-off))
}

// BlobChunk is one piece of a blob, sent in order after the manifest.
type BlobChunk struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// Index is the chunk's position, 0..MaxBlobChunks-1; the fetcher
	// requires consecutive indices from 0.
	Index int `msgpack:"index"`
	// Data is the chunk, 1..MaxBlobChunk bytes.
	Data []byte `msgpack:"data"`
}

func (*BlobChunk) Type() MsgType    { return TypeBlobChunk }
func (m *BlobChunk) version() uint8 { return m.V }

func (m *BlobChunk) Validate() error {
	if err := checkVersion(m.V); err != nil {
		return err
	}
	if err := checkRange("Index", m.Index, 0, MaxBlobChunks-1); err != nil {
		return err
	}
	return checkRange("len(Data)", len(m.Data), 1, MaxBlobChunk)
}
