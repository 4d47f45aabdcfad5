// Smoke test of the Java stubs against a live engine: create and publish the "hello" definition,
// start a flow, watch its events to the end and print its fingerprint as one JSON line:
//   java -cp ... Smoke 127.0.0.1:50052 <namespace> '{"name":"Ada"}'
// Built with javac and Debian's grpc-java jars (no Maven): see clients/polyglot/check.sh.
import flowledger.v1.Common.FlowStatus;
import flowledger.v1.Engine;
import flowledger.v1.EngineServiceGrpc;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import java.util.Iterator;
import java.util.concurrent.TimeUnit;

public final class Smoke {
  private static final String HELLO = "{\"steps\": ["
      + "{\"id\": \"greet\", \"type\": \"hello.greet\", \"config\": {\"name\": \"world\"}},"
      + "{\"id\": \"shout\", \"type\": \"hello.shout\"},"
      + "{\"id\": \"done\", \"type\": \"hello.done\"}]}";

  public static void main(String[] args) throws InterruptedException {
    String addr = args[0];
    String ns = args[1];
    String input = args.length > 2 ? args[2] : "null";
    ManagedChannel channel = ManagedChannelBuilder.forTarget(addr).usePlaintext().build();
    try {
      EngineServiceGrpc.EngineServiceBlockingStub engine =
          EngineServiceGrpc.newBlockingStub(channel).withDeadlineAfter(60, TimeUnit.SECONDS);
      Engine.CreateDefinitionVersionResponse created = engine.createDefinitionVersion(
          Engine.CreateDefinitionVersionRequest.newBuilder()
              .setNamespace(ns).setName("hello").setDocument(HELLO)
              .setFormat(Engine.DefinitionFormat.DEFINITION_FORMAT_JSON).build());
      long version = created.getVersion().getVersion();
      engine.publishDefinitionVersion(Engine.PublishDefinitionVersionRequest.newBuilder()
          .setNamespace(ns).setName("hello").setVersion(version).build());
      String flowId = engine.startFlow(Engine.StartFlowRequest.newBuilder()
          .setNamespace(ns).setDefinitionName("hello").setInputJson(input)
          .setIdempotencyKey("java-smoke-1").build()).getFlowId();
      Iterator<Engine.WatchFlowResponse> stream = engine.watchFlow(
          Engine.WatchFlowRequest.newBuilder().setNamespace(ns).setFlowId(flowId).build());
      int events = 0;
      FlowStatus status = FlowStatus.FLOW_STATUS_UNSPECIFIED;
      while (stream.hasNext()) {
        Engine.WatchFlowResponse batch = stream.next();
        events += batch.getEventsCount();
        status = batch.getStatus();
      }
      Engine.FlowView view = engine.describeFlow(Engine.DescribeFlowRequest.newBuilder()
          .setNamespace(ns).setFlowId(flowId).build()).getFlow();
      System.out.printf(
          "{\"language\": \"java\", \"flow_id\": \"%s\", \"status\": \"%s\", \"events\": %d,"
              + " \"flow_fingerprint\": \"%s\"}%n",
          flowId, status.name(), events, view.getFlowFingerprint());
    } finally {
      channel.shutdownNow().awaitTermination(10, TimeUnit.SECONDS);
    }
  }
}
