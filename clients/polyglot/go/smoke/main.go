// Smoke test of the Go stubs against a live engine: create and publish the "hello" definition,
// start a flow, watch its events to the end and print its fingerprint as one JSON line:
//
//	smoke -addr 127.0.0.1:50052 -ns demo -input '{"name":"Ada"}'
//
// Built in GOPATH mode with Debian's grpc-go (1.33): see clients/polyglot/check.sh.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	pb "flowledger/gen/flowledgerv1"

	"google.golang.org/grpc"
)

const hello = `{"steps": [
  {"id": "greet", "type": "hello.greet", "config": {"name": "world"}},
  {"id": "shout", "type": "hello.shout"},
  {"id": "done", "type": "hello.done"}]}`

func main() {
	addr := flag.String("addr", "127.0.0.1:50052", "engine address")
	ns := flag.String("ns", "go-smoke", "namespace")
	input := flag.String("input", "null", "flow input (JSON text)")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := grpc.DialContext(ctx, *addr, grpc.WithInsecure(), grpc.WithBlock())
	if err != nil {
		log.Fatalf("dial %s: %v", *addr, err)
	}
	defer conn.Close()
	engine := pb.NewEngineServiceClient(conn)

	created, err := engine.CreateDefinitionVersion(ctx, &pb.CreateDefinitionVersionRequest{
		Namespace: *ns, Name: "hello", Document: hello, Format: pb.DefinitionFormat_DEFINITION_FORMAT_JSON,
	})
	if err != nil {
		log.Fatalf("create definition: %v", err)
	}
	version := created.GetVersion().GetVersion()
	if _, err := engine.PublishDefinitionVersion(ctx, &pb.PublishDefinitionVersionRequest{
		Namespace: *ns, Name: "hello", Version: version,
	}); err != nil {
		log.Fatalf("publish: %v", err)
	}
	started, err := engine.StartFlow(ctx, &pb.StartFlowRequest{
		Namespace: *ns, DefinitionName: "hello", InputJson: *input, IdempotencyKey: "go-smoke-1",
	})
	if err != nil {
		log.Fatalf("start flow: %v", err)
	}
	stream, err := engine.WatchFlow(ctx, &pb.WatchFlowRequest{Namespace: *ns, FlowId: started.GetFlowId()})
	if err != nil {
		log.Fatalf("watch: %v", err)
	}
	events := 0
	status := pb.FlowStatus_FLOW_STATUS_UNSPECIFIED
	for {
		batch, err := stream.Recv()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatalf("watch: %v", err)
		}
		events += len(batch.GetEvents())
		status = batch.GetStatus()
	}
	view, err := engine.DescribeFlow(ctx, &pb.DescribeFlowRequest{Namespace: *ns, FlowId: started.GetFlowId()})
	if err != nil {
		log.Fatalf("describe: %v", err)
	}
	out, _ := json.Marshal(map[string]interface{}{
		"language":         "go",
		"flow_id":          started.GetFlowId(),
		"status":           status.String(),
		"events":           events,
		"flow_fingerprint": view.GetFlow().GetFlowFingerprint(),
	})
	fmt.Fprintln(os.Stdout, string(out))
}
