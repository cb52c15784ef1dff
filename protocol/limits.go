package protocol

// Size limits. Every frame length is checked against MaxFrameBytes before
// its body is read, every nested msgpack length before decoding, and every
// field against these bounds in Validate.
const (
	// MaxSeqLen is the most tokens in one sequence of an EmbedRequest.
	MaxSeqLen = 8192
	// MaxSeqsPerChunk is the most sequences in one EmbedRequest.
	MaxSeqsPerChunk = 1024
	// MaxTokensPerChunk is the most tokens, summed over sequences, in one
	// EmbedRequest.
	MaxTokensPerChunk = 1 << 17
	// MaxHiddenDim is the largest hidden width D of a base.
	MaxHiddenDim = 16384
	// MaxModelLayers is the largest number of transformer blocks in a base.
	MaxModelLayers = 1024
	// MaxVocab bounds a base's vocabulary and so every token ID.
	MaxVocab = 1 << 22
	// MaxLayersPerRequest is the most layers one EmbedRequest may ask for.
	MaxLayersPerRequest = 8
	// MaxFileBytes is the largest file (adaptor) carryon fetches or
	// announces.
	MaxFileBytes = 2 << 30
	// MaxGossipBytes caps a whole gossip frame. It sits well below pubsub's
	// 1 MiB default, above which messages are dropped without an error.
	MaxGossipBytes = 64 << 10
	// MaxResultData caps EmbedResult.Data: the frame cap less room for the
	// other fields.
	MaxResultData = 64<<20 - 4<<10
	// MaxRosterMembers is the most peers one Roster lists (a roster is one
	// gossip message: MaxRosterMembers IDs of up to maxPeerIDBytes fit in
	// MaxGossipBytes).
	MaxRosterMembers = 1024

	// Smaller bounds on individual fields.
	maxBases       = 16   // Advert.Bases
	maxCodecs      = 32   // Advert.Codecs
	maxMetrics     = 32   // AdaptorAnnounce.Metrics entries
	maxNameLen     = 128  // names: BaseInfo.Name, Device
	maxTokenLen    = 64   // short identifiers: codec, arch, metric names, JobID
	maxTextLen     = 1024 // free text: Ack.Reason, Error.Msg
	maxKeyBytes    = 1024 // AdaptorAnnounce.Signer (a marshalled public key)
	maxSigBytes    = 1024 // AdaptorAnnounce.Sig
	maxFreeSlots   = 1 << 16
	maxPeerIDBytes = 48 // a Roster member (Ed25519 IDs are 38 bytes, hashed keys 34)
	smallFrameCap  = 4 << 10
)

// MaxFrameBytes is the cap on the body length of a frame of type t. Types
// this build does not know get the largest cap, so they can be skipped.
func MaxFrameBytes(t MsgType) int {
	switch t {
	case TypeAdvert:
		return 64 << 10
	case TypeEmbedRequest:
		return 8 << 20 // MaxTokensPerChunk tokens at <= 5 bytes each is 640 KiB
	case TypeEmbedResult:
		return 64 << 20
	case TypeEmbedDone, TypeAck, TypeError:
		return smallFrameCap
	case TypeAdaptorAnnounce:
		return 16 << 10
	case TypeResultOffer, TypeOfferReply:
		return MaxOfferChunks*(64+2) + smallFrameCap // 64-hex IDs with str8 headers
	case TypeRoster:
		return MaxGossipBytes
	case TypeJobAnnounce:
		return smallFrameCap
	case TypeCacheQuery:
		return MaxCacheQueryChunks*(64+2) + smallFrameCap
	case TypeCacheIndex:
		return MaxCacheQueryChunks*(maxCIDLen+2) + smallFrameCap
	}
	return 64 << 20
}

// maxElems bounds the msgpack elements (array items plus map keys and
// values) in a body of type t, which bounds what decoding it allocates.
func maxElems(t MsgType) int {
	const fields = 64 // room for every field's key and value, plus unknown ones
	switch t {
	case TypeAdvert:
		return fields + maxBases*fields + maxCodecs
	case TypeEmbedRequest:
		return fields + MaxLayersPerRequest + MaxSeqsPerChunk + MaxTokensPerChunk
	case TypeAdaptorAnnounce:
		return fields + 2*maxMetrics
	case TypeResultOffer, TypeOfferReply:
		return fields + MaxOfferChunks
	case TypeRoster:
		return fields + MaxRosterMembers
	case TypeJobAnnounce:
		return 2 * fields // the nested BaseInfo
	case TypeCacheQuery, TypeCacheIndex:
		return fields + MaxCacheQueryChunks
	}
	return fields
}

// maxCIDLen is the longest CID string in a message: a CIDv1 with a
// sha2-256 digest is 59 characters in base32, a CIDv0 46. Lengths are
// checked before a string is decoded: base58 decoding takes time
// quadratic in the length, and a decoding error quotes the string.
const maxCIDLen = 100

// maxPeerIDLen is the longest peer ID string in a message (checked before
// decoding, as maxCIDLen): an Ed25519 key's is 52 characters, an RSA
// key's 46, a CIDv1 form about 62.
const maxPeerIDLen = 128
