package protocol

// JobAnnounce is a coordinator's statement of what its current job needs,
// published on ControlTopic when the job starts, whenever a peer starts
// listening on that topic (at most once a second) and every
// JobAnnounceInterval. A node that serves none of the job's bases says so
// in its log instead of waiting in silence; the gossip author (signed by
// pubsub) is the coordinator.
type JobAnnounce struct {
	V uint8 `msgpack:"v"` // message version, >= 1
	// Job is the job's ID, 1..64 lowercase hex characters.
	Job string `msgpack:"job"`
	// Base is the base model the job's chunks run on.
	Base BaseInfo `msgpack:"base"`
	// Codec is the bridge setting nodes must offer (an identifier, "q8").
	Codec string `msgpack:"codec"`
	// Joined is how many eligible nodes the coordinator has now, 0..2^31.
	Joined int `msgpack:"joined"`
	// MinNodes is how many it waits for before leasing, 0..2^31.
	MinNodes int `msgpack:"min_nodes"`
	// Pending is how many chunks still wait for a node, 0..2^40.
	Pending int `msgpack:"pending"`
	// UnixMilli is when the announcement was made, ms since the epoch, > 0.
	UnixMilli int64 `msgpack:"ms"`
}

func (*JobAnnounce) Type() MsgType    { return TypeJobAnnounce }
func (m *JobAnnounce) version() uint8 { return m.V }

func (m *JobAnnounce) Validate() error {
	return firstErr(
		checkVersion(m.V),
		checkHex("Job", m.Job, 0),
		checkBase("Base", m.Base),
		checkIdent("Codec", m.Codec),
		checkRange("Joined", m.Joined, 0, 1<<31),
		checkRange("MinNodes", m.MinNodes, 0, 1<<31),
		checkRange("Pending", m.Pending, 0, 1<<40),
		checkRange("UnixMilli", m.UnixMilli, 1, 1<<62),
	)
}
