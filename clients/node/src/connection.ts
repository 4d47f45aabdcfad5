/**
 * How a client reaches the engine: TLS or plaintext, the CA, a client certificate, the token.
 *
 * The rule is flowctl's (docs/security.md): TLS unless told otherwise, except that an engine on a
 * loopback address with no TLS setting is reached in plaintext, because that is what
 * `flowctl up` serves. `tls: true` / `tls: false` decide explicitly. A token is sent as
 * `authorization: Bearer <token>` metadata on every call; it is refused for a plaintext
 * connection beyond loopback rather than sent in the clear.
 */
import { readFileSync } from "node:fs";
import {
  credentials as grpcCredentials,
  Metadata,
  type ChannelCredentials,
  type ClientOptions,
} from "@grpc/grpc-js";

/** TLS towards the engine. Files are read once, when the client is made. */
export interface TlsSettings {
  /** PEM CA(s) that signed the engine's certificate; default: the system's roots. */
  ca?: Buffer;
  caFile?: string;
  /** PEM client certificate and key, for an engine that requires mutual TLS. */
  cert?: Buffer;
  certFile?: string;
  key?: Buffer;
  keyFile?: string;
  /** The name to expect in the engine's certificate when the address does not carry it. */
  serverName?: string;
}

/** Connection settings shared by {@link FlowledgerClient} and the task worker. */
export interface ConnectionSettings {
  /** Deadline of each unary call (ms). Streams have none unless given per call. */
  timeoutMs?: number;
  /** Bearer token sent with every call. */
  token?: string;
  /**
   * `true` (TLS with the system's roots), TLS settings, or `false` (plaintext). Default: TLS,
   * except plaintext to a loopback address.
   */
  tls?: boolean | TlsSettings;
  /** Full control of the channel instead of `tls` (the token is still sent as metadata). */
  credentials?: ChannelCredentials;
  channelOptions?: ClientOptions;
}

/** True for `host:port` on this machine (127.0.0.0/8, `localhost`, `[::1]`). */
export function isLoopback(address: string): boolean {
  const target = address.replace(/^(dns:\/\/\/|ipv4:|ipv6:)/, "");
  const colon = target.lastIndexOf(":");
  const host = colon < 0 || target.endsWith("]") ? target : target.slice(0, colon);
  return host === "localhost" || host === "[::1]" || host === "::1" || /^127\./.test(host);
}

/** What a client needs to open its channel and to authenticate each call. */
export interface Connection {
  credentials: ChannelCredentials;
  options: ClientOptions;
  /** Fresh metadata for one call (with the token, when there is one). */
  metadata(): Metadata;
}

function pem(value: Buffer | undefined, file: string | undefined, what: string): Buffer | undefined {
  if (value !== undefined && file !== undefined) {
    throw new TypeError(`give ${what} or ${what}File, not both`);
  }
  return file === undefined ? value : readFileSync(file);
}

/** Resolves `settings` for a channel to `address`; throws TypeError for contradictions. */
export function connect(address: string, settings: ConnectionSettings = {}): Connection {
  const options: ClientOptions = { ...settings.channelOptions };
  let credentials = settings.credentials;
  if (credentials === undefined) {
    const tls = settings.tls ?? !isLoopback(address);
    if (tls === false) {
      if (settings.token !== undefined && !isLoopback(address)) {
        throw new TypeError(`refusing to send the token in plaintext to ${address}: use TLS `
          + "(tls: true or TLS settings) or a loopback address");
      }
      credentials = grpcCredentials.createInsecure();
    } else {
      const s: TlsSettings = tls === true ? {} : tls;
      const cert = pem(s.cert, s.certFile, "cert");
      const key = pem(s.key, s.keyFile, "key");
      if ((cert === undefined) !== (key === undefined)) {
        throw new TypeError("a client certificate and its key go together");
      }
      credentials = grpcCredentials.createSsl(pem(s.ca, s.caFile, "ca") ?? null, key ?? null,
        cert ?? null);
      if (s.serverName !== undefined) {
        options["grpc.ssl_target_name_override"] = s.serverName;
        options["grpc.default_authority"] = s.serverName;
      }
    }
  }
  const token = settings.token;
  if (token !== undefined && (token === "" || /[\r\n]/.test(token))) {
    throw new TypeError("the token must be one non-empty line");
  }
  return {
    credentials,
    options,
    metadata() {
      const metadata = new Metadata();
      if (token !== undefined) metadata.set("authorization", `Bearer ${token}`);
      return metadata;
    },
  };
}

/**
 * Settings from the variables flowctl reads: `FLOWLEDGER_TOKEN`, `FLOWLEDGER_CA_FILE`,
 * `FLOWLEDGER_CLIENT_CERT` / `FLOWLEDGER_CLIENT_KEY`, `FLOWLEDGER_SERVER_NAME` and
 * `FLOWLEDGER_TLS` (`1`/`0`; unset: the loopback rule, or TLS when a TLS file is named).
 */
export function connectionFromEnv(env: NodeJS.ProcessEnv = process.env): ConnectionSettings {
  const value = (name: string): string | undefined => env[name] || undefined;
  const tlsFlag = value("FLOWLEDGER_TLS");
  const files: TlsSettings = {
    caFile: value("FLOWLEDGER_CA_FILE"),
    certFile: value("FLOWLEDGER_CLIENT_CERT"),
    keyFile: value("FLOWLEDGER_CLIENT_KEY"),
    serverName: value("FLOWLEDGER_SERVER_NAME"),
  };
  const anyFile = Object.values(files).some((v) => v !== undefined);
  let tls: boolean | TlsSettings | undefined;
  if (tlsFlag !== undefined && /^(0|false|no|off)$/i.test(tlsFlag)) {
    if (anyFile) throw new TypeError("FLOWLEDGER_TLS=0 contradicts the TLS files named");
    tls = false;
  } else if (anyFile) {
    tls = Object.fromEntries(Object.entries(files).filter(([, v]) => v !== undefined));
  } else if (tlsFlag !== undefined) {
    tls = /^(1|true|yes|on)$/i.test(tlsFlag) ? true : undefined;
    if (tls === undefined) throw new TypeError(`FLOWLEDGER_TLS=${tlsFlag}: say 1 or 0`);
  }
  return { token: value("FLOWLEDGER_TOKEN"), tls };
}
