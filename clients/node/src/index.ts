export * from "./canonical.js";
export * from "./client.js";
export * from "./errors.js";
export * from "./fingerprint.js";
export * from "./verify.js";
export { FlowStatus, EventType } from "./gen/flowledger/v1/common.js";
export type { Artifact, Event, Flow } from "./gen/flowledger/v1/common.js";
export type { DefinitionVersion, FlowView, StepView } from "./gen/flowledger/v1/engine.js";
export { StepStatus, DefinitionState } from "./gen/flowledger/v1/engine.js";
