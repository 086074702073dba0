/** Reading a text stream line by line (a child process's output, for instance). */

/**
 * Calls `onLine` with each line of `stream` (without its newline) as it arrives, and with the
 * unterminated rest, if any, when the stream ends.
 */
export function forEachLine(stream: NodeJS.ReadableStream | null | undefined, onLine: (line: string) => void): void {
  if (!stream) return;
  let buffered = '';
  stream.setEncoding('utf8');
  stream.on('data', (data: string) => {
    buffered += data;
    const lines = buffered.split('\n');
    buffered = lines.pop() ?? '';
    for (const line of lines) onLine(line);
  });
  stream.on('end', () => {
    if (buffered) onLine(buffered);
  });
}
