<?php

namespace Runwire\Laravel;

use Illuminate\Contracts\Auth\Authenticatable;
use Illuminate\Contracts\Config\Repository;
use InvalidArgumentException;
use RuntimeException;

/**
 * runwire as the host app sees it: the short-lived HS256 tokens runwire accepts, where
 * browsers reach it, and what a page needs to load the client. runwire decides access itself
 * from the tables the app already has, so a token carries nothing but the user.
 *
 * It must not decide access, and it never logs or caches a token.
 */
final class Runwire
{
    public function __construct(private Repository $config)
    {
    }

    /**
     * A token for `$user` (a user or its id): `sub` = the id, `exp` = now + `$ttl` (default
     * `runwire.ttl`). HS256 is one HMAC, so no JWT library is needed.
     */
    public function token(Authenticatable|int|string $user, ?int $ttl = null): string
    {
        $secret = (string) $this->config->get('runwire.secret');
        if (strlen($secret) < 32) {
            throw new RuntimeException('runwire.secret (RUNWIRE_JWT_SECRET) must be at least 32 bytes: the same secret runwire verifies with');
        }
        $id = $user instanceof Authenticatable ? $user->getAuthIdentifier() : $user;
        if ($id === null || $id === '') {
            throw new InvalidArgumentException('a runwire token needs a user id');
        }
        $claims = [
            'sub' => (string) $id,
            'exp' => time() + ($ttl ?? (int) $this->config->get('runwire.ttl', 300)),
        ];
        $signed = self::base64url(json_encode(['alg' => 'HS256', 'typ' => 'JWT']))
            .'.'.self::base64url(json_encode($claims));

        return $signed.'.'.self::base64url(hash_hmac('sha256', $signed, $secret, true));
    }

    /** Where browsers reach runwire, without a trailing slash. */
    public function url(): string
    {
        return rtrim((string) $this->config->get('runwire.url', '/runwire'), '/');
    }

    /** The token route's path (`/runwire/token`), or null when it is off. */
    public function tokenPath(): ?string
    {
        if (! $this->config->get('runwire.token_route.enabled', true)) {
            return null;
        }

        return '/'.ltrim((string) $this->config->get('runwire.token_route.path', 'runwire/token'), '/');
    }

    /**
     * What `Runwire.page()` reads: runwire's URL, a token for `$user` (none without one) and
     * the token route to ask for the next.
     */
    public function clientConfig(?Authenticatable $user): array
    {
        return array_filter([
            'url' => $this->url(),
            'token' => $user ? $this->token($user) : null,
            'tokenUrl' => $this->tokenPath(),
        ], fn ($value) => $value !== null);
    }

    /**
     * `@runwireScripts`: the client configuration and the global script `runwire.js`, then
     * every server-rendered `<x-runwire::…>` element goes live (once the document is parsed).
     */
    public function scripts(?Authenticatable $user): string
    {
        $json = json_encode($this->clientConfig($user), JSON_HEX_TAG | JSON_HEX_AMP | JSON_HEX_APOS | JSON_HEX_QUOT | JSON_UNESCAPED_SLASHES);
        $src = htmlspecialchars($this->url().'/runwire.js', ENT_QUOTES);

        return '<script type="application/json" id="runwire-config">'.$json.'</script>'."\n"
            .'<script src="'.$src.'"></script>'."\n"
            .'<script>(function () { var live = function () { if (document.querySelector("[data-runwire-run], [data-runwire-review-pack]")) runwire.Runwire.page().bind(document); };'
            .' if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", live); else live(); })();</script>';
    }

    /** Whether a run with this status is active (runwire's rule: anything else is terminal). */
    public static function runIsActive(?string $status): bool
    {
        return in_array($status, ['queued', 'running'], true);
    }

    /** Whether a review pack with this status is active (no pack, or any other status: terminal). */
    public static function packIsActive(?string $status): bool
    {
        return in_array($status, ['queued', 'generating'], true);
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }
}
