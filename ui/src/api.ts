import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";
import type { AgentEventPayload, AgentSnapshot } from "./types";

// One function per Tauri command in src-tauri/src/commands; names must match.

export const STATE_EVENT = "agent://state";
export const AGENT_EVENT = "agent://event";

export function getState(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("get_state");
}

export function login(hubUrl: string, token: string): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("login", { hubUrl, token });
}

export function logout(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("logout");
}

export function pause(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("pause");
}

export function resume(): Promise<AgentSnapshot> {
  return invoke<AgentSnapshot>("resume");
}

export function onState(handler: (snapshot: AgentSnapshot) => void): Promise<UnlistenFn> {
  return listen<AgentSnapshot>(STATE_EVENT, (event) => handler(event.payload));
}

export function onAgentEvent(handler: (event: AgentEventPayload) => void): Promise<UnlistenFn> {
  return listen<AgentEventPayload>(AGENT_EVENT, (event) => handler(event.payload));
}
