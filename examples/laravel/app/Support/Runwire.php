<?php

namespace App\Support;

use Illuminate\Contracts\Auth\Authenticatable;

/**
 * Mints the short-lived HS256 tokens runwire accepts: `sub` = the user id, `exp` required.
 * runwire decides access itself from the same tables the app uses, so the token carries
 * nothing but the user. No JWT library needed: HS256 is one HMAC.
 */
final class Runwire
{
    public static function token(Authenticatable $user, ?int $ttl = null): string
    {
        $secret = (string) config('services.runwire.secret');
        if (strlen($secret) < 32) {
            throw new \RuntimeException('services.runwire.secret (RUNWIRE_JWT_SECRET) must be at least 32 bytes');
        }
        $claims = [
            'sub' => (string) $user->getAuthIdentifier(),
            'exp' => time() + ($ttl ?? (int) config('services.runwire.ttl')),
        ];
        $signed = self::base64url(json_encode(['alg' => 'HS256', 'typ' => 'JWT']))
            .'.'.self::base64url(json_encode($claims));

        return $signed.'.'.self::base64url(hash_hmac('sha256', $signed, $secret, true));
    }

    private static function base64url(string $bytes): string
    {
        return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '=');
    }
}
