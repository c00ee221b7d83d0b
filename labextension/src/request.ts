/**
 * Every call to the server goes through here: Jupyter's authenticated connection settings, and an
 * Error that carries the server's own message (our handlers answer `{"message": ...}`).
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** A refusal: the server's own message (or the status text), and the HTTP status. */
export class RequestError extends Error {
  constructor(
    message: string,
    readonly status: number
  ) {
    super(message);
  }
}

/** The JSON answer of `path` under the server's base URL; a RequestError with the server's message otherwise. */
export async function requestAPI<T>(
  path: string,
  init: RequestInit = {},
  settings: ServerConnection.ISettings = ServerConnection.makeSettings()
): Promise<T> {
  const url = URLExt.join(settings.baseUrl, path);
  const response = await ServerConnection.makeRequest(url, init, settings);
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new RequestError(body.message ?? response.statusText, response.status);
  }
  return response.json();
}
