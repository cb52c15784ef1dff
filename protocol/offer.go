package protocol

// OfferProtocol carries result offers, node → coordinator: after a
// reconnect (or while it holds results the coordinator has not made
// durable), a node lists the finished chunks it still holds, so that a
// restarted coordinator leases them back to it and recomputes nothing.
// v1: initial.
const OfferProtocol = "/carryon/offer/1.0.0"

// AckVersion is the version of Ack this build writes: v2 adds Held.
const AckVersion uint8 = 2

// MaxOfferChunks is the most chunk IDs in one ResultOffer or OfferReply.
const MaxOfferChunks = 1024

// ResultOffer lists the chunks of one job whose complete results a node
// holds without a durable acknowledgement (no Ack came, or Ack.Held).
//
//	node → coordinator  ResultOffer{JobID, Chunks}
//	coordinator → node  OfferReply{JobID, Stored}; then the coordinator
//	                    leases the other offered chunks back to the node
//	                    first, and the node answers those EmbedRequests from
//	                    what it holds, without computing.
type ResultOffer struct {
	V     uint8  `msgpack:"v"`   // message version, >= 1
	JobID string `msgpack:"job"` // the EmbedRequests' JobID
	// Chunks are 1..MaxOfferChunks distinct ChunkIDs (64 lowercase hex).
	Chunks []string `msgpack:"chunks"`
}

func (*ResultOffer) Type() MsgType    { return TypeResultOffer }
func (m *ResultOffer) version() uint8 { return m.V }

func (m *ResultOffer) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("JobID", m.JobID, 0),
		checkChunkIDs("Chunks", m.Chunks, 1, MaxOfferChunks),
	)
}

// OfferReply answers a ResultOffer.
type OfferReply struct {
	V     uint8  `msgpack:"v"`   // message version, >= 1
	JobID string `msgpack:"job"` // the offer's JobID
	// Stored are the offered chunks the coordinator already holds durably,
	// 0..MaxOfferChunks distinct ChunkIDs: the node may forget them.
	Stored []string `msgpack:"stored"`
}

func (*OfferReply) Type() MsgType    { return TypeOfferReply }
func (m *OfferReply) version() uint8 { return m.V }

func (m *OfferReply) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("JobID", m.JobID, 0),
		checkChunkIDs("Stored", m.Stored, 0, MaxOfferChunks),
	)
}
