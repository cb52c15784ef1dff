// Package protocol is carryon's wire vocabulary: the libp2p protocol IDs and
// gossip topic names, the framed msgpack messages that travel on them, their
// size caps, the content identifiers (CIDs) carryon accepts, swarm keys, and
// the signature over an adaptor announcement. It has no goroutines and does
// no I/O of its own beyond the io.Reader/io.Writer it is handed; node/,
// coordinator/ and swarm/ all speak through it and never through each other.
//
// # Protocol flow
//
// Node presence (gossipsub topic NodesTopic(swarm), "carryon/<swarm>/nodes/1"):
//
//	node → all          Advert{Peer, Bases[{Name, WeightsHash, Arch, Dim, Layers, Vocab}],
//	                           Codecs, TokensPerSec, FreeSlots, Device, UnixMilli}
//
// Embedding job (stream protocol EmbedProtocol, "/carryon/embed/1.0.0"; the
// coordinator opens the stream, over the connection the node dialled):
//
//	coordinator → node  EmbedRequest{JobID, ChunkID, BaseHash, Layers, Codec, Seqs}
//	node → coordinator  EmbedResult{JobID, ChunkID, Seq, Layer, Codec, Rows, Dim, Data}
//	                    ... one per (sequence, layer), streamed as each is ready
//	node → coordinator  EmbedDone{JobID, ChunkID, Results, ComputeMillis}
//	                    | Error{Kind, Msg} at any point instead (then the node closes)
//	coordinator → node  Ack{JobID, ChunkID, OK, Reason, Held}
//	                    sent only once the result is durable (or, with Held,
//	                    accepted but held in memory for verification); the
//	                    job counts as delivered only once the Ack is read. A
//	                    node keeps every result without such an Ack (or with
//	                    Held) and offers it again:
//
// Result offers (stream protocol OfferProtocol, "/carryon/offer/1.0.0"; the
// node opens the stream when it (re)connects to a coordinator it holds
// results for):
//
//	node → coordinator  ResultOffer{JobID, Chunks}
//	coordinator → node  OfferReply{JobID, Stored}
//	                    Stored ones the node forgets; the others are leased
//	                    back to it and answered without computing.
//
// Adaptor versions (gossipsub topic AdaptorsTopic(swarm), "carryon/<swarm>/adaptors/1"):
//
//	coordinator → all   AdaptorAnnounce{CID, Parent, BaseHash, Step, Size, Metrics,
//	                                    UnixMilli, Signer, Sig}   (signed, see Sign/Verify)
//
// Cached embeddings (stream protocol CacheProtocol, "/carryon/cache/1.0.0";
// a trainer opens the stream to a coordinator that holds the job's cache):
//
//	trainer → coordinator  CacheQuery{Base, Codec, Layer, Chunks}
//	coordinator → trainer  CacheIndex{CIDs}   one per chunk, "" = not held
//	                       then the trainer fetches the frames by CID over
//	                       bitswap.
//
// Files (adaptors, cached embeddings) are not carryon messages: they are
// UnixFS files named by CID (ParseCID) and move over IPFS's bitswap
// (/ipfs/bitswap/1.2.0) on the same hosts, so Kubo nodes in the swarm can
// fetch and serve them (package swarm).
//
// # Frame format
//
// Every message, on a stream or in a gossip payload, is one frame:
//
//	+--------+-----------+----------------------+----------------------+
//	| u8     | u8        | u32 big-endian       | msgpack map          |
//	| type   | version   | body length in bytes | body (length bytes)  |
//	+--------+-----------+----------------------+----------------------+
//
// type is a MsgType, version equals the body's "v" field. The length is
// checked against MaxFrameBytes(type) before the body is read, and the body's
// nested lengths are checked by ValidateMsgpack before msgpack/v5 decodes it
// (msgpack/v5 trusts length prefixes: unchecked, six bytes could make it
// allocate hundreds of MiB). The body is a msgpack map keyed by short field
// names; receivers ignore keys they do not know.
//
// # Versioning rules
//
//   - A breaking change gets a new protocol ID (EmbedProtocol "/1.0.0" →
//     "/2.0.0"); a node registers both during a transition and multistream
//     negotiation picks one. Topic names end in a major version too.
//   - An additive change appends a field and bumps that message's version
//     byte; old receivers ignore the new key, new receivers accept the old
//     version with the new field at its zero value.
//   - MsgType and ErrorKind values are on the wire: append only, never reuse.
//   - Receivers skip frames of a type they do not know (on streams).
//
// Changelog:
//
//	v1 (all messages, EmbedProtocol/BlobProtocol 1.0.0, topics /1): initial.
//	BlobProtocol and its messages (types 8-10) removed: files move over
//	bitswap; AdaptorAnnounce.CID names a UnixFS file.
//	Ack v2: Held. ResultOffer/OfferReply v1 (types 11, 12), OfferProtocol
//	1.0.0: result offers after a coordinator restart.
//	CacheQuery/CacheIndex v1 (types 15, 16), CacheProtocol 1.0.0: the
//	embedding cache's key → CID index, for trainers fetching by CID.
package protocol
