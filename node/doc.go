// Package node is the volunteer: a libp2p peer that advertises the base
// models it serves on the swarm's nodes topic and answers embedding jobs on
// protocol.EmbedProtocol by running the base forward pass and returning the
// requested layers' hidden states, compressed by the bridge codec.
//
// A Node never imports the coordinator: both speak only protocol/.
//
// Lifecycle (after tsnet.Server): fill the exported fields of Config, call
// Start, and Close when done. Start registers the stream handler and the
// advert loop; Close removes the handler first (stop intake), waits for
// in-flight jobs up to Config.DrainTimeout, then stops the advert loop.
package node
