// Package e2e holds the end-to-end tests of the whole path: an in-process nats-server
// with JetStream, llmsim over real HTTP, workers, the collector and the producer, as
// one user would run them. It has no non-test code besides this comment.
package e2e
