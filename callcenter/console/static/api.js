// fetch() with the session's CSRF token on every change, and one place that handles an
// expired session (back to the sign-in page with a message).

let csrfToken = null;

export function setCsrf(token) {
  csrfToken = token;
}

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `请求失败（${status}）`);
    this.status = status;
    this.body = body || {};
  }
}

export function toSignIn(reason = "expired") {
  const next = location.pathname.startsWith("/console/") ? location.pathname : "/console/";
  location.assign(`/console/login?m=${encodeURIComponent(reason)}&next=${encodeURIComponent(next)}`);
}

/** background: polling that must not keep an unattended session alive. */
export async function request(method, url, body, { background = false } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET") headers["X-CSRF-Token"] = csrfToken || "";
  if (background) headers["X-Console-Background"] = "1";
  let response;
  try {
    response = await fetch(url, {
      method, headers, credentials: "same-origin", body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (error) {
    throw new ApiError(0, { error: "network", message: "无法连接服务器，请检查网络" });
  }
  let data = null;
  if ((response.headers.get("Content-Type") || "").includes("application/json")) data = await response.json();
  if (response.status === 401) {
    toSignIn(data && data.error === "session_expired" ? "expired" : "");
    throw new ApiError(401, data);
  }
  if (!response.ok) throw new ApiError(response.status, data);
  return data;
}

export const get = (url, options) => request("GET", url, undefined, options);
export const post = (url, body) => request("POST", url, body === undefined ? {} : body);
export const patch = (url, body) => request("PATCH", url, body);

export function query(params) {
  const search = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") search.set(key, value);
  }
  const text = search.toString();
  return text ? `?${text}` : "";
}
