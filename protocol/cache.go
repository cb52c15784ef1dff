package protocol

// CacheProtocol asks a peer which of a job's cached embeddings it holds
// and under which CIDs, trainer → coordinator: the trainer then fetches
// them by CID over bitswap (from that peer, or any other that has the
// blocks, Kubo included) instead of computing the base's forward pass
// again. The frames themselves are UnixFS files, never carryon messages.
// v1: initial.
const CacheProtocol = "/carryon/cache/1.0.0"

// MaxCacheQueryChunks is the most chunk IDs in one CacheQuery (and CIDs in
// its CacheIndex); a trainer asks in batches.
const MaxCacheQueryChunks = 1024

// CacheQuery asks for the CIDs of the cached frames of one (base, codec,
// layer) for a list of chunks.
//
//	trainer → coordinator  CacheQuery{Base, Codec, Layer, Chunks}
//	coordinator → trainer  CacheIndex{CIDs}  (one per chunk, "" = not held)
//	                       ... further queries on the same stream, then
//	                       the trainer closes it.
type CacheQuery struct {
	V     uint8  `msgpack:"v"`     // message version, >= 1
	Base  string `msgpack:"base"`  // the base's WeightsHash, 64 hex characters
	Codec string `msgpack:"codec"` // the bridge codec the frames are encoded with
	Layer int    `msgpack:"layer"` // -1 = final after the norm, 0 = embeddings, k = after block k
	// Chunks are 1..MaxCacheQueryChunks distinct ChunkIDs (64 lowercase hex).
	Chunks []string `msgpack:"chunks"`
}

func (*CacheQuery) Type() MsgType    { return TypeCacheQuery }
func (m *CacheQuery) version() uint8 { return m.V }

func (m *CacheQuery) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("Base", m.Base, 64),
		checkIdent("Codec", m.Codec),
		checkLayer("Layer", m.Layer),
		checkChunkIDs("Chunks", m.Chunks, 1, MaxCacheQueryChunks),
	)
}

// CacheIndex answers a CacheQuery.
type CacheIndex struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// CIDs has one entry per queried chunk, in the query's order: the CID
	// (ParseCID's kinds) of the chunk's frame, or "" when the peer does not
	// hold it. 0..MaxCacheQueryChunks entries; the receiver checks the
	// count against its query.
	CIDs []string `msgpack:"cids"`
}

func (*CacheIndex) Type() MsgType    { return TypeCacheIndex }
func (m *CacheIndex) version() uint8 { return m.V }

func (m *CacheIndex) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkList("CIDs", m.CIDs, 0, MaxCacheQueryChunks, checkOptCIDField),
	)
}
